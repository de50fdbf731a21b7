//! Topic routing: which decoder reads a topic, and how the topic names the device
//! (`ingest.routes`).

use ioc_config::Route;
use ioc_contract::{valid_device_id, valid_external_id, Device, EXTERNAL_ID_KINDS};

use crate::Format;

/// How a matched topic names its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRef<'t> {
    /// `{device_id}`: the registry id itself.
    Id(&'t str),
    /// `{imei}`, `{station_code}`, `{camera_id}`: an external id, else a device id of that name.
    External { kind: &'static str, value: &'t str },
    /// Not in the topic: the payload names it (`vendor-flat`).
    InPayload,
}

impl<'t> DeviceRef<'t> {
    /// The id the topic names, for provenance on a dead letter.
    pub fn named(self) -> Option<&'t str> {
        match self {
            DeviceRef::Id(id) => Some(id),
            DeviceRef::External { value, .. } => Some(value),
            DeviceRef::InPayload => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Level {
    Literal(String),
    DeviceId,
    External(&'static str),
    Any,
}

#[derive(Debug, Clone)]
struct Compiled {
    pattern: String,
    levels: Vec<Level>,
    format: Format,
}

/// The configured routes, compiled. The first matching route wins.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Compiled>,
}

impl Router {
    /// Compiles validated routes (`ioc_config::validate` checked their syntax and formats).
    pub fn new(routes: &[Route]) -> Router {
        let routes = routes
            .iter()
            .filter_map(|r| {
                let format = Format::parse(&r.format)?;
                let levels = r
                    .levels()
                    .map(|l| match l {
                        Ok(lit) => Level::Literal(lit.to_string()),
                        Err("device_id") => Level::DeviceId,
                        Err(name) => EXTERNAL_ID_KINDS
                            .iter()
                            .find(|k| **k == name)
                            .map_or(Level::Any, |k| Level::External(k)),
                    })
                    .collect();
                Some(Compiled {
                    pattern: r.topic.clone(),
                    levels,
                    format,
                })
            })
            .collect();
        Router { routes }
    }

    /// The format of a topic's payloads and how it names the device. A captured id that is not
    /// a valid id matches nothing (the message is a `bad_topic`).
    pub fn route<'t>(&self, topic: &'t str) -> Option<(Format, DeviceRef<'t>)> {
        'routes: for route in &self.routes {
            let mut device = DeviceRef::InPayload;
            let mut parts = levels(topic);
            for level in &route.levels {
                let Some(part) = parts.next() else {
                    continue 'routes;
                };
                match level {
                    Level::Literal(l) if l == part => {}
                    Level::Literal(_) => continue 'routes,
                    Level::DeviceId if valid_device_id(part) => device = DeviceRef::Id(part),
                    Level::External(kind) if valid_external_id(part) => {
                        device = DeviceRef::External { kind, value: part }
                    }
                    Level::Any if !part.is_empty() => {}
                    _ => continue 'routes,
                }
            }
            if parts.next().is_none() {
                return Some((route.format, device));
            }
        }
        None
    }

    /// Whether a topic has the literal levels of a camera-event route, whatever its captured ids:
    /// a message there may hold a plate even when its topic is invalid.
    pub fn camera_like(&self, topic: &str) -> bool {
        self.routes
            .iter()
            .filter(|r| r.format == Format::CameraEvent)
            .any(|r| {
                // Compared level by level without collecting the topic.
                let mut parts = levels(topic);
                r.levels.iter().all(|l| match (l, parts.next()) {
                    (_, None) => false,
                    (Level::Literal(lit), Some(p)) => lit == p,
                    (_, Some(_)) => true,
                }) && parts.next().is_none()
            })
    }

    /// The MQTT filters to subscribe to.
    pub fn filters(&self) -> Vec<String> {
        self.routes
            .iter()
            .map(|r| {
                r.levels
                    .iter()
                    .map(|l| match l {
                        Level::Literal(s) => s.as_str(),
                        _ => "+",
                    })
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect()
    }

    /// The topics `device` publishes on: one per route in a format it may send, its id (or its
    /// external id of the route's kind, if it has one) in the id level and in any other capture.
    /// Its decoder's route comes first. What its broker account may publish on.
    ///
    /// A route whose topic names no device (vendor-flat: the payload names it) lets whoever
    /// may publish there send for any device of that format, so only a device registered with
    /// that decoder (the gateway itself) gets it, on its own gateway topic.
    pub fn device_topics(&self, device: &Device) -> Vec<String> {
        let names_device = |r: &Compiled| {
            r.levels
                .iter()
                .any(|l| matches!(l, Level::DeviceId | Level::External(_)))
        };
        let mut topics: Vec<(bool, String)> = Vec::new();
        for route in self.routes.iter().filter(|r| {
            crate::may_speak(device, r.format)
                && (names_device(r) || device.decoder.as_deref() == Some(r.format.name()))
        }) {
            let topic = route
                .levels
                .iter()
                .map(|l| match l {
                    Level::Literal(s) => s.as_str(),
                    Level::External(kind) => device
                        .external_ids
                        .get(*kind)
                        .map_or(device.device_id.as_str(), String::as_str),
                    Level::DeviceId | Level::Any => device.device_id.as_str(),
                })
                .collect::<Vec<_>>()
                .join("/");
            let main = device.decoder.as_deref() == Some(route.format.name());
            if !topics.iter().any(|(_, t)| *t == topic) {
                topics.push((main, topic));
            }
        }
        // Stable: otherwise in route order.
        topics.sort_by_key(|(main, _)| !main);
        topics.into_iter().map(|(_, t)| t).collect()
    }

    /// The patterns, for a `bad_topic` reason.
    pub fn patterns(&self) -> Vec<&str> {
        self.routes.iter().map(|r| r.pattern.as_str()).collect()
    }
}

/// A topic's levels, as `topic.split('/')` gives them: split on the byte (asked of every
/// message, and a `char` pattern costs a memchr and a memcmp per level).
fn levels(topic: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(topic);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.bytes().position(|b| b == b'/') {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_router() -> Router {
        let config = ioc_config::load_str(None, Vec::new()).unwrap();
        Router::new(&config.ingest.routes)
    }

    #[test]
    fn the_default_routes_cover_every_format() {
        let r = default_router();
        let mut formats: Vec<_> = r.routes.iter().map(|c| c.format).collect();
        formats.sort_by_key(|f| f.name());
        formats.dedup();
        assert_eq!(formats.len(), Format::ALL.len());
        assert!(r
            .filters()
            .contains(&"ioc/v1/devices/+/telemetry".to_string()));
    }

    #[test]
    fn a_device_publishes_on_the_routes_of_the_formats_it_may_send() {
        let r = default_router();
        let device = |id: &str, kind: &str, decoder: Option<&str>, ids: &[(&str, &str)]| Device {
            device_id: id.into(),
            kind: kind.into(),
            decoder: decoder.map(str::to_string),
            external_ids: ids
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        assert_eq!(
            r.device_topics(&device("aq-1", "air_quality", Some("ioc-json"), &[])),
            ["ioc/v1/devices/aq-1/telemetry"]
        );
        assert_eq!(
            r.device_topics(&device(
                "ww-1",
                "wastewater",
                Some("tt10-station"),
                &[("station_code", "DLK_NT_001")]
            )),
            ["ioc/v1/stations/DLK_NT_001/file"]
        );
        assert_eq!(
            r.device_topics(&device(
                "cam-1",
                "traffic_camera",
                Some("camera-event"),
                &[]
            )),
            ["ioc/v1/cameras/cam-1/events"]
        );
        // No decoder: every route its kind may speak, never a camera's.
        let any = r.device_topics(&device("tc-1", "traffic_counter", None, &[]));
        assert!(any.contains(&"ioc/v1/devices/tc-1/counts".to_string()));
        assert!(any.contains(&"ioc/v1/devices/tc-1/telemetry".to_string()));
        assert!(!any
            .iter()
            .any(|t| t.contains("cameras") || t.contains("stations") || t.contains("gateways")));
        // A gateway's route, only for a device registered as one.
        assert_eq!(
            r.device_topics(&device("gw-1", "air_quality", Some("vendor-flat"), &[])),
            ["ioc/v1/gateways/gw-1/flat"]
        );
        // Every topic routes back to this device (or its external id) in a format it may send.
        for t in &any {
            let (_, named) = r.route(t).unwrap();
            assert!(
                matches!(named, DeviceRef::Id("tc-1") | DeviceRef::InPayload),
                "{t}"
            );
        }
    }

    #[test]
    fn topics_resolve_to_formats_and_device_references() {
        let r = default_router();
        assert_eq!(
            r.route("ioc/v1/devices/aq-1/telemetry"),
            Some((Format::IocJson, DeviceRef::Id("aq-1")))
        );
        assert_eq!(
            r.route("ioc/v1/devices/aq-1/senml"),
            Some((Format::Senml, DeviceRef::Id("aq-1")))
        );
        assert_eq!(
            r.route("ioc/v1/stations/DLK_NT_001/file"),
            Some((
                Format::Tt10Station,
                DeviceRef::External {
                    kind: "station_code",
                    value: "DLK_NT_001"
                }
            ))
        );
        assert_eq!(
            r.route("ioc/v1/gateways/gw-1/flat"),
            Some((Format::VendorFlat, DeviceRef::InPayload))
        );
        assert_eq!(
            r.route("ioc/v1/cameras/CAM-1/events").map(|m| m.0),
            Some(Format::CameraEvent)
        );
        for bad in [
            "ioc/v1/devices/a+b/telemetry",
            "ioc/v1/devices/aq-1/telemetry/x",
            "ioc/v1/devices/aq-1",
            "ioc/v1/devices//telemetry",
            "other/topic",
        ] {
            assert_eq!(r.route(bad), None, "{bad}");
        }
    }

    #[test]
    fn camera_like_topics_have_a_camera_route_s_literal_levels_and_length() {
        let r = default_router();
        for yes in ["ioc/v1/cameras/CAM-1/events", "ioc/v1/cameras/CAM 1/events"] {
            assert!(r.camera_like(yes), "{yes}");
        }
        for no in [
            "ioc/v1/cameras/CAM-1",
            "ioc/v1/cameras/CAM-1/events/x",
            "ioc/v1/cameras/CAM-1/other",
            "ioc/v1/devices/CAM-1/telemetry",
            "",
        ] {
            assert!(!r.camera_like(no), "{no}");
        }
    }

    #[test]
    fn levels_are_what_split_gives() {
        for topic in [
            "",
            "/",
            "a",
            "a/b",
            "/a/",
            "a//b",
            "ioc/v1/devices/aq-1/telemetry",
            "đắk/lắk/",
        ] {
            assert_eq!(
                levels(topic).collect::<Vec<_>>(),
                topic.split('/').collect::<Vec<_>>(),
                "{topic:?}"
            );
        }
    }
}
