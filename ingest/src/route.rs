//! Topic routing: which decoder reads a topic, and how the topic names the device
//! (`ingest.routes`).

use ioc_config::Route;
use ioc_contract::{valid_device_id, valid_external_id, EXTERNAL_ID_KINDS};

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
            let mut parts = topic.split('/');
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
                // Asked of every message: compare level by level without collecting the topic.
                let mut parts = topic.split('/');
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

    /// The patterns, for a `bad_topic` reason.
    pub fn patterns(&self) -> Vec<&str> {
        self.routes.iter().map(|r| r.pattern.as_str()).collect()
    }
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
}
