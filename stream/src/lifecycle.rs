//! The lifecycle of one alert rule instance, evaluated window by window in event time (pure):
//! a condition that holds becomes `pending`, then fires once it has held for the rule's `for`;
//! a firing alert resolves when its clear condition holds (the rule's `clear_sql`, or without
//! one its condition no longer holding), but not before `keep_firing_for` has passed since the
//! condition last held. With a clear query, a value between the two conditions keeps the alert
//! as it is: an alert hovering at its limit fires once. (Acknowledgement, revision and the
//! single writer of each instance come with wiring this into the stream.)

/// A rule's timing, in event-time milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timing {
    pub for_ms: i64,
    pub keep_firing_for_ms: i64,
    /// Whether the rule has its own clear condition.
    pub has_clear: bool,
}

/// Where one instance stands.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum State {
    #[default]
    Inactive,
    /// The condition has held since `since` (a window start), not yet for `for`.
    Pending { since: i64 },
    /// Firing since `fired_at`; the condition first held at `started_at`, last at `last_held`
    /// (a window end).
    Firing {
        started_at: i64,
        fired_at: i64,
        last_held: i64,
    },
}

/// What a step changed, to publish.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    Fired {
        started_at: i64,
        fired_at: i64,
        value: f64,
    },
    Resolved {
        at: i64,
    },
}

/// One evaluated window `[start, end)` of the instance's input: whether the condition held
/// (the rule's query returned the instance) and whether the clear condition held.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    pub start: i64,
    pub end: i64,
    pub held: bool,
    pub cleared: bool,
    pub value: f64,
}

/// The next state after `e`, and the transition to publish if any. Windows come in event-time
/// order.
pub fn step(state: State, timing: Timing, e: Evaluation) -> (State, Option<Transition>) {
    let clears = if timing.has_clear { e.cleared } else { !e.held };
    match state {
        State::Inactive | State::Pending { .. } if e.held => {
            let since = match state {
                State::Pending { since } => since,
                _ => e.start,
            };
            if e.end - since >= timing.for_ms {
                let fired = State::Firing {
                    started_at: since,
                    fired_at: e.end,
                    last_held: e.end,
                };
                let t = Transition::Fired {
                    started_at: since,
                    fired_at: e.end,
                    value: e.value,
                };
                (fired, Some(t))
            } else {
                (State::Pending { since }, None)
            }
        }
        State::Inactive | State::Pending { .. } => (State::Inactive, None),
        State::Firing {
            started_at,
            fired_at,
            ..
        } if e.held => (
            State::Firing {
                started_at,
                fired_at,
                last_held: e.end,
            },
            None,
        ),
        State::Firing { last_held, .. }
            if clears && e.end - last_held >= timing.keep_firing_for_ms =>
        {
            (State::Inactive, Some(Transition::Resolved { at: e.end }))
        }
        firing @ State::Firing { .. } => (firing, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    /// A golden case (`stream/golden/lifecycle/*.txt`): `window M` (minutes), `for M`,
    /// `keep_firing_for M`, `clear yes|no`, then `input` lines `start_minute held cleared
    /// value` (`held`/`cleared` as 1 or 0), then `expect` lines `fired started fired_at value`
    /// and `resolved at` (minutes).
    fn run(text: &str) -> Result<(), String> {
        let mut timing = Timing::default();
        let mut window = MIN;
        let (mut inputs, mut expect) = (Vec::new(), Vec::new());
        let mut section = "";
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            let num = |i: usize| f[i].parse::<f64>().map_err(|e| format!("{line}: {e}"));
            match (section, f[0]) {
                (_, "input" | "expect") => section = f[0],
                ("", "window") => window = num(1)? as i64 * MIN,
                ("", "for") => timing.for_ms = num(1)? as i64 * MIN,
                ("", "keep_firing_for") => timing.keep_firing_for_ms = num(1)? as i64 * MIN,
                ("", "clear") => timing.has_clear = f[1] == "yes",
                ("input", _) => inputs.push(Evaluation {
                    start: num(0)? as i64 * MIN,
                    end: num(0)? as i64 * MIN + window,
                    held: f[1] == "1",
                    cleared: f[2] == "1",
                    value: num(3)?,
                }),
                ("expect", "fired") => expect.push(Transition::Fired {
                    started_at: num(1)? as i64 * MIN,
                    fired_at: num(2)? as i64 * MIN,
                    value: num(3)?,
                }),
                ("expect", "resolved") => expect.push(Transition::Resolved {
                    at: num(1)? as i64 * MIN,
                }),
                _ => return Err(format!("unreadable line {line:?}")),
            }
        }
        let mut state = State::Inactive;
        let mut got = Vec::new();
        for e in inputs {
            let (next, t) = step(state, timing, e);
            state = next;
            got.extend(t);
        }
        if got == expect {
            Ok(())
        } else {
            Err(format!("transitions {got:?}, expected {expect:?}"))
        }
    }

    #[test]
    fn every_golden_lifecycle_file() {
        let files = crate::tests::golden_files("lifecycle");
        assert!(files.len() >= 4, "golden files: {files:?}");
        let failures: Vec<String> = files
            .iter()
            .filter_map(|f| {
                let text = std::fs::read_to_string(f).unwrap();
                run(&text).err().map(|e| format!("{}: {e}", f.display()))
            })
            .collect();
        assert!(failures.is_empty(), "{failures:#?}");
    }
}
