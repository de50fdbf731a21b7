//! The faults the simulator can inject, and which of them a run has on.

use std::fmt;

/// One way a device, its clock or its uplink misbehaves. Each produces bytes a decoder sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// A truncated or garbled payload, or JSON of the wrong shape.
    Malformed,
    /// A unit the pipeline cannot know (`grains`, `furlong`, `lb`): a rejection, not a conversion.
    WrongUnit,
    /// The sensor flatlines: the same values for a stretch of the device's messages.
    Stuck,
    /// A value outside the metric's physical range (PM2.5 9999, pH 15).
    Spike,
    /// The device clock is hours ahead (future timestamps) or behind.
    ClockSkew,
    /// The exact same topic and payload published again (a resend).
    Duplicate,
    /// After an outage the device sends what it missed, with old timestamps.
    Backfill,
    /// Many messages from one device in a short time.
    Burst,
}

impl Fault {
    pub const ALL: [Fault; 8] = [
        Fault::Malformed,
        Fault::WrongUnit,
        Fault::Stuck,
        Fault::Spike,
        Fault::ClockSkew,
        Fault::Duplicate,
        Fault::Backfill,
        Fault::Burst,
    ];

    /// The name used by `--faults` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Malformed => "malformed",
            Fault::WrongUnit => "wrong-units",
            Fault::Stuck => "stuck",
            Fault::Spike => "spikes",
            Fault::ClockSkew => "clock-skew",
            Fault::Duplicate => "duplicates",
            Fault::Backfill => "backfill",
            Fault::Burst => "bursts",
        }
    }

    pub fn parse(name: &str) -> Option<Fault> {
        let name = name.trim();
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }

    fn index(self) -> usize {
        Fault::ALL
            .iter()
            .position(|f| *f == self)
            .expect("every fault is in ALL")
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The probability per message that a fault is injected, unless told otherwise.
pub const DEFAULT_FAULT_RATE: f64 = 0.05;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultsError {
    #[error("unknown fault {0:?}; known: all, none, malformed, wrong-units, stuck, spikes, clock-skew, duplicates, backfill, bursts")]
    Unknown(String),
    #[error("the fault rate must be a probability from 0 to 1, found {0}")]
    Rate(f64),
}

/// Which faults a run injects, and how often: with probability `rate` a message draws one of
/// the enabled faults that its device's format can show.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    enabled: [bool; 8],
    rate: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults::none()
    }
}

impl Faults {
    pub fn none() -> Faults {
        Faults {
            enabled: [false; 8],
            rate: DEFAULT_FAULT_RATE,
        }
    }

    /// Every fault, `rate` of the messages (clamped to 0..=1).
    pub fn all(rate: f64) -> Faults {
        Faults {
            enabled: [true; 8],
            rate: rate.clamp(0.0, 1.0),
        }
    }

    /// Just these faults, at the default rate.
    pub fn only(faults: &[Fault]) -> Faults {
        let mut out = Faults::none();
        for f in faults {
            out.enabled[f.index()] = true;
        }
        out
    }

    /// A comma list of fault names, `all`, or `none` (or empty), at the default rate.
    pub fn parse(list: &str) -> Result<Faults, FaultsError> {
        let mut out = Faults::none();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name {
                "all" => out.enabled = [true; 8],
                "none" => {}
                _ => {
                    let f = Fault::parse(name).ok_or_else(|| FaultsError::Unknown(name.into()))?;
                    out.enabled[f.index()] = true;
                }
            }
        }
        Ok(out)
    }

    pub fn with_rate(mut self, rate: f64) -> Result<Faults, FaultsError> {
        if !(0.0..=1.0).contains(&rate) {
            return Err(FaultsError::Rate(rate));
        }
        self.rate = rate;
        Ok(self)
    }

    pub fn is_enabled(&self, fault: Fault) -> bool {
        self.enabled[fault.index()]
    }

    pub fn is_none(&self) -> bool {
        !self.enabled.iter().any(|on| *on) || self.rate == 0.0
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    pub fn enabled(&self) -> impl Iterator<Item = Fault> + '_ {
        Fault::ALL.into_iter().filter(|f| self.is_enabled(*f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_lists_parse() {
        for f in Fault::ALL {
            assert_eq!(Fault::parse(f.name()), Some(f));
        }
        assert_eq!(Fault::parse("stucky"), None);
        let f = Faults::parse("malformed, stuck").unwrap();
        assert!(f.is_enabled(Fault::Malformed) && f.is_enabled(Fault::Stuck));
        assert_eq!(f.enabled().count(), 2);
        assert_eq!(Faults::parse("all").unwrap().enabled().count(), 8);
        assert!(Faults::parse("").unwrap().is_none());
        assert!(Faults::parse("none").unwrap().is_none());
        assert_eq!(
            Faults::parse("malformed,grains"),
            Err(FaultsError::Unknown("grains".into()))
        );
        assert!(Faults::all(0.1).with_rate(1.5).is_err());
        assert_eq!(Faults::none().rate(), DEFAULT_FAULT_RATE);
    }
}
