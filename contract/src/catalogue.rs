//! The canonical metric catalogue (DOMAIN.md §1): one name and one unit per quantity, and the
//! physical range outside which a value is kept but flagged `bad`.

/// One entry of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricSpec {
    pub name: &'static str,
    /// Canonical unit, written exactly as DOMAIN.md writes it.
    pub unit: &'static str,
    /// Inclusive physical range. Wide on purpose: it catches broken sensors, not pollution.
    pub min: f64,
    pub max: f64,
    /// `{"metric":"<name>","value":`, how a reading of it begins in the readings record.
    pub json_head: &'static str,
    /// `,"unit":"<unit>"`, as the readings record writes it.
    pub json_unit: &'static str,
}

/// A catalogue entry, with its pieces of the readings record built at compile time (names and
/// units need no JSON escaping: a test holds that).
macro_rules! m {
    ($name:literal, $unit:literal, $min:expr, $max:expr) => {
        MetricSpec {
            name: $name,
            unit: $unit,
            min: $min,
            max: $max,
            json_head: concat!("{\"metric\":\"", $name, "\",\"value\":"),
            json_unit: concat!(",\"unit\":\"", $unit, "\""),
        }
    };
}

/// Every metric the pipeline accepts.
pub const CATALOGUE: &[MetricSpec] = &[
    m!("pm1", "µg/m³", 0.0, 2_000.0),
    m!("pm25", "µg/m³", 0.0, 2_000.0),
    m!("pm10", "µg/m³", 0.0, 5_000.0),
    m!("tsp", "µg/m³", 0.0, 10_000.0),
    m!("no2", "µg/m³", 0.0, 20_000.0),
    m!("so2", "µg/m³", 0.0, 20_000.0),
    m!("o3", "µg/m³", 0.0, 5_000.0),
    m!("co", "µg/m³", 0.0, 200_000.0),
    m!("no", "µg/m³", 0.0, 20_000.0),
    m!("nox", "µg/m³", 0.0, 40_000.0),
    m!("temperature", "°C", -40.0, 100.0),
    m!("humidity", "%", 0.0, 100.0),
    m!("pressure", "hPa", 300.0, 1_100.0),
    m!("wind_speed", "m/s", 0.0, 100.0),
    m!("wind_dir", "degrees", 0.0, 360.0),
    m!("noise", "dBA", 0.0, 150.0),
    m!("ph", "pH", 0.0, 14.0),
    m!("cod", "mg/L", 0.0, 100_000.0),
    m!("bod5", "mg/L", 0.0, 50_000.0),
    m!("tss", "mg/L", 0.0, 100_000.0),
    m!("nh4", "mg/L", 0.0, 10_000.0),
    m!("total_n", "mg/L", 0.0, 10_000.0),
    m!("total_p", "mg/L", 0.0, 5_000.0),
    m!("do", "mg/L", 0.0, 50.0),
    m!("color", "Pt-Co", 0.0, 10_000.0),
    m!("turbidity", "NTU", 0.0, 10_000.0),
    m!("conductivity", "µS/cm", 0.0, 200_000.0),
    m!("flow", "m³/h", 0.0, 100_000.0),
    m!("vehicle_count", "vehicles", 0.0, 100_000.0),
    m!("avg_speed", "km/h", 0.0, 300.0),
    m!("occupancy", "%", 0.0, 100.0),
];

/// The catalogue entry for a metric name, if the name is canonical.
#[inline]
pub fn lookup(name: &str) -> Option<&'static MetricSpec> {
    position(name).map(|i| &CATALOGUE[i])
}

/// Where a metric name is in [`CATALOGUE`], if the name is canonical.
#[inline]
pub fn position(name: &str) -> Option<usize> {
    // Byte by byte rather than `==`: for names this short, a call to memcmp per candidate
    // costs more than the comparison (ingest looks up every value of every message).
    let name = name.as_bytes();
    CATALOGUE.iter().position(|spec| {
        let candidate = spec.name.as_bytes();
        candidate.len() == name.len() && candidate.iter().zip(name).all(|(a, b)| a == b)
    })
}

/// Each entry's place in name order (byte-wise, as a JSON object's keys sort): `NAME_RANK[i]`
/// for `CATALOGUE[i]`. Computed at compile time, so values can be put in name order without
/// comparing names. Fewer than 64 entries, so a set of them fits a `u64`.
pub const NAME_RANK: [u8; CATALOGUE.len()] = name_ranks();

const _: () = assert!(CATALOGUE.len() <= 64);

const fn name_ranks() -> [u8; CATALOGUE.len()] {
    const fn less(a: &[u8], b: &[u8]) -> bool {
        let mut i = 0;
        while i < a.len() && i < b.len() {
            if a[i] != b[i] {
                return a[i] < b[i];
            }
            i += 1;
        }
        a.len() < b.len()
    }
    let mut ranks = [0u8; CATALOGUE.len()];
    let mut i = 0;
    while i < CATALOGUE.len() {
        let mut j = 0;
        while j < CATALOGUE.len() {
            if less(CATALOGUE[j].name.as_bytes(), CATALOGUE[i].name.as_bytes()) {
                ranks[i] += 1;
            }
            j += 1;
        }
        i += 1;
    }
    ranks
}

impl MetricSpec {
    #[inline]
    pub fn in_range(&self, value: f64) -> bool {
        value >= self.min && value <= self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_ranges_ordered() {
        for (i, a) in CATALOGUE.iter().enumerate() {
            assert!(a.min < a.max, "{}", a.name);
            for b in &CATALOGUE[i + 1..] {
                assert_ne!(a.name, b.name);
            }
        }
    }

    #[test]
    fn ranks_are_name_order() {
        let mut names: Vec<&str> = CATALOGUE.iter().map(|s| s.name).collect();
        names.sort();
        for (i, spec) in CATALOGUE.iter().enumerate() {
            assert_eq!(names[NAME_RANK[i] as usize], spec.name);
            assert_eq!(position(spec.name), Some(i));
        }
    }

    #[test]
    fn record_pieces_are_what_serde_json_writes() {
        for spec in CATALOGUE {
            let metric = serde_json::to_string(spec.name).unwrap();
            assert_eq!(spec.json_head, format!("{{\"metric\":{metric},\"value\":"));
            let unit = serde_json::to_string(spec.unit).unwrap();
            assert_eq!(spec.json_unit, format!(",\"unit\":{unit}"));
        }
    }

    #[test]
    fn units_are_written_as_the_domain_reference_writes_them() {
        assert_eq!(lookup("pm25").unwrap().unit, "µg/m³");
        assert_eq!(lookup("cod").unwrap().unit, "mg/L");
        assert_eq!(lookup("temperature").unwrap().unit, "°C");
        assert_eq!(lookup("flow").unwrap().unit, "m³/h");
        assert!(lookup("PM2.5").is_none());
        for spec in CATALOGUE {
            assert_eq!(lookup(spec.name), Some(spec));
            assert_eq!(lookup(&spec.name[1..]), None);
            assert_eq!(lookup(&format!("{}~", spec.name)), None);
        }
    }
}
