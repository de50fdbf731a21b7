//! Units to the canonical catalogue (DOMAIN.md §1): a reported unit, however a vendor spells it,
//! is converted to the metric's canonical unit or refused with a reason — never guessed.
//!
//! Conversions: mg/m³ → µg/m³ (× 1000); ppb and ppm → µg/m³ for the gases with a molar mass in
//! DOMAIN.md, at 25 °C and 1 atm (µg/m³ = ppb × M / 24.45); °F → °C; fraction → % (× 100);
//! m³/s and L/s → m³/h; kPa → hPa; mS/cm → µS/cm. Spellings such as `ug/m3`, `µg/m3`, `oC`,
//! `mg/l`, `m3/h` are the same unit as the catalogue's.

use crate::catalogue::MetricSpec;

/// Molar volume at 25 °C and 1 atm, L/mol (QCVN 05:2023 reference conditions).
pub const MOLAR_VOLUME_25C: f64 = 24.45;

/// Molar masses (g/mol) of the gases DOMAIN.md gives.
pub fn molar_mass(metric: &str) -> Option<f64> {
    match metric {
        "no2" => Some(46.01),
        "so2" => Some(64.07),
        "o3" => Some(48.00),
        "co" => Some(28.01),
        "no" => Some(30.01),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UnitError {
    #[error("unknown unit {unit:?}")]
    Unknown { unit: String },
    #[error("{metric} is in {canonical}; {unit:?} cannot be converted to it")]
    NotConvertible {
        metric: String,
        unit: String,
        canonical: &'static str,
    },
}

/// A unit as a kind, whatever its spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    MicrogramPerM3,
    MilligramPerM3,
    Ppb,
    Ppm,
    Celsius,
    Fahrenheit,
    Percent,
    Fraction,
    MilligramPerL,
    Ph,
    M3PerHour,
    M3PerSecond,
    LitrePerSecond,
    KmPerHour,
    MPerSecond,
    HectoPascal,
    KiloPascal,
    Dba,
    PtCo,
    Ntu,
    MicroSiemensPerCm,
    MilliSiemensPerCm,
    Vehicles,
    Degrees,
}

fn parse(unit: &str) -> Option<Unit> {
    // Ingest converts on every message that names a unit: no allocation for the catalogue's
    // own spellings, nor for a spelling the normalization below would leave as it is.
    if let Some(u) = catalogue_spelling(unit) {
        return Some(u);
    }
    if unit
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase())
    {
        return normalized(unit);
    }
    let t: String = unit
        .trim()
        .to_lowercase()
        .replace(['µ', 'μ'], "u")
        .replace('³', "3")
        .replace(['°', 'º', ' '], "");
    normalized(&t)
}

/// The catalogue's units as DOMAIN.md writes them; each is what its normalized spelling is.
fn catalogue_spelling(unit: &str) -> Option<Unit> {
    use Unit::*;
    Some(match unit {
        "µg/m³" => MicrogramPerM3,
        "°C" => Celsius,
        "%" => Percent,
        "hPa" => HectoPascal,
        "m/s" => MPerSecond,
        "degrees" => Degrees,
        "dBA" => Dba,
        "pH" => Ph,
        "mg/L" => MilligramPerL,
        "Pt-Co" => PtCo,
        "NTU" => Ntu,
        "µS/cm" => MicroSiemensPerCm,
        "m³/h" => M3PerHour,
        "vehicles" => Vehicles,
        "km/h" => KmPerHour,
        _ => return None,
    })
}

/// A normalized spelling (trimmed, lowercase, `u` for µ, `3` for ³, no degree signs or spaces).
fn normalized(t: &str) -> Option<Unit> {
    use Unit::*;
    Some(match t {
        "ug/m3" => MicrogramPerM3,
        "mg/m3" => MilligramPerM3,
        "ppb" => Ppb,
        "ppm" => Ppm,
        "c" | "oc" | "degc" | "celsius" => Celsius,
        "f" | "of" | "degf" | "fahrenheit" => Fahrenheit,
        "%" | "percent" | "%rh" => Percent,
        "fraction" | "ratio" => Fraction,
        "mg/l" => MilligramPerL,
        "ph" => Ph,
        "m3/h" | "m3/hr" => M3PerHour,
        "m3/s" => M3PerSecond,
        "l/s" => LitrePerSecond,
        "km/h" | "kmh" | "kph" => KmPerHour,
        "m/s" => MPerSecond,
        "hpa" | "mbar" => HectoPascal,
        "kpa" => KiloPascal,
        "dba" | "db(a)" => Dba,
        "pt-co" | "ptco" | "pt/co" => PtCo,
        "ntu" => Ntu,
        "us/cm" => MicroSiemensPerCm,
        "ms/cm" => MilliSiemensPerCm,
        "vehicles" | "veh" | "vehicle" => Vehicles,
        "degrees" | "deg" => Degrees,
        _ => return None,
    })
}

/// Converts `value` in `unit` to `spec`'s canonical unit.
pub fn to_canonical(spec: &MetricSpec, value: f64, unit: &str) -> Result<f64, UnitError> {
    let from = parse(unit).ok_or_else(|| UnitError::Unknown {
        unit: unit.to_string(),
    })?;
    let canonical = parse(spec.unit).expect("catalogue units parse");
    let not_convertible = || UnitError::NotConvertible {
        metric: spec.name.to_string(),
        unit: unit.to_string(),
        canonical: spec.unit,
    };
    if from == canonical {
        return Ok(value);
    }
    use Unit::*;
    let gas = || molar_mass(spec.name).ok_or_else(not_convertible);
    Ok(match (from, canonical) {
        (MilligramPerM3, MicrogramPerM3) => value * 1000.0,
        (Ppb, MicrogramPerM3) => value * gas()? / MOLAR_VOLUME_25C,
        (Ppm, MicrogramPerM3) => value * 1000.0 * gas()? / MOLAR_VOLUME_25C,
        (Fahrenheit, Celsius) => (value - 32.0) * 5.0 / 9.0,
        (Fraction, Percent) => value * 100.0,
        (M3PerSecond, M3PerHour) => value * 3600.0,
        (LitrePerSecond, M3PerHour) => value * 3.6,
        (KiloPascal, HectoPascal) => value * 10.0,
        (MilliSiemensPerCm, MicroSiemensPerCm) => value * 1000.0,
        _ => return Err(not_convertible()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::{lookup, CATALOGUE};

    fn conv(metric: &str, value: f64, unit: &str) -> Result<f64, UnitError> {
        to_canonical(lookup(metric).unwrap(), value, unit)
    }

    #[test]
    fn every_catalogue_unit_is_its_own_identity() {
        for spec in CATALOGUE {
            assert_eq!(to_canonical(spec, 1.5, spec.unit), Ok(1.5), "{}", spec.name);
        }
    }

    #[test]
    fn the_shortcuts_agree_with_normalizing() {
        let slow = |unit: &str| {
            let t: String = unit
                .trim()
                .to_lowercase()
                .replace(['µ', 'μ'], "u")
                .replace('³', "3")
                .replace(['°', 'º', ' '], "");
            normalized(&t)
        };
        for spec in CATALOGUE {
            assert!(catalogue_spelling(spec.unit).is_some(), "{}", spec.unit);
        }
        for unit in CATALOGUE.iter().map(|s| s.unit).chain([
            "µg/m³", "°C", "%", "hPa", "m/s", "degrees", "dBA", "pH", "mg/L", "Pt-Co", "NTU",
            "µS/cm", "m³/h", "vehicles", "km/h", "mg/m3", "ug/m3", "ppb", "PPM", " ppm", "of",
            "kpa", "l/s", "db(a)", "pt/co", "%rh", "fraction", "furlongs", "", "m3/hr", "deg",
        ]) {
            assert_eq!(parse(unit), slow(unit), "{unit:?}");
        }
    }

    #[test]
    fn vendor_spellings_are_the_same_unit() {
        for u in ["ug/m3", "µg/m3", "μg/m³", "UG/M3", " ug/m³ "] {
            assert_eq!(conv("pm25", 35.2, u), Ok(35.2), "{u}");
        }
        assert_eq!(conv("temperature", 28.4, "oC"), Ok(28.4));
        assert_eq!(conv("cod", 61.5, "mg/l"), Ok(61.5));
        assert_eq!(conv("flow", 12.0, "m3/h"), Ok(12.0));
    }

    #[test]
    fn gases_convert_at_25_degrees_and_1_atm() {
        // 1 mg/m³ CO = 1000 µg/m³; 21 ppb NO2 = 21 × 46.01 / 24.45 µg/m³.
        assert_eq!(conv("co", 1.2, "mg/m³"), Ok(1200.0));
        let no2 = conv("no2", 21.0, "ppb").unwrap();
        assert!((no2 - 39.518).abs() < 0.001, "{no2}");
        let co = conv("co", 1.0, "ppm").unwrap();
        assert!((co - 1145.6).abs() < 0.1, "{co}");
        let o3 = conv("o3", 50.0, "ppb").unwrap();
        assert!((o3 - 98.16).abs() < 0.01, "{o3}");
        // SO2 64.07 and NO 30.01 g/mol (DOMAIN.md): 10 ppb = 26.204 and 12.274 µg/m³.
        let so2 = conv("so2", 10.0, "ppb").unwrap();
        assert!((so2 - 26.2045).abs() < 0.001, "{so2}");
        let no = conv("no", 10.0, "ppb").unwrap();
        assert!((no - 12.2740).abs() < 0.001, "{no}");
        let so2_ppm = conv("so2", 0.01, "ppm").unwrap();
        assert!((so2_ppm - so2).abs() < 1e-9, "1 ppm is 1000 ppb: {so2_ppm}");
    }

    #[test]
    fn other_conversions() {
        assert!((conv("temperature", 82.4, "°F").unwrap() - 28.0).abs() < 1e-9);
        assert_eq!(conv("occupancy", 0.25, "fraction"), Ok(25.0));
        assert_eq!(conv("flow", 0.01, "m3/s"), Ok(36.0));
        assert_eq!(conv("flow", 10.0, "L/s"), Ok(36.0));
        assert_eq!(conv("conductivity", 1.2, "mS/cm"), Ok(1200.0));
    }

    #[test]
    fn unknown_or_unconvertible_units_are_refused_with_a_reason() {
        assert_eq!(
            conv("pm25", 1.0, "grains"),
            Err(UnitError::Unknown {
                unit: "grains".into()
            })
        );
        // No molar mass for particulates, or for nox (DOMAIN.md gives none).
        assert!(matches!(
            conv("pm25", 1.0, "ppb"),
            Err(UnitError::NotConvertible { .. })
        ));
        assert!(matches!(
            conv("nox", 1.0, "ppb"),
            Err(UnitError::NotConvertible { .. })
        ));
        let e = conv("cod", 1.0, "°C").unwrap_err();
        assert_eq!(
            e.to_string(),
            "cod is in mg/L; \"°C\" cannot be converted to it"
        );
    }
}
