//! The common shape of a v1 body read without serde: a JSON object whose members are scalars,
//! `values` and `units` objects of scalars, strings without escapes, and numbers whose value
//! serde_json computes exactly (integers of at most 19 digits; decimals with a significand of at
//! most 2^53 and a power of ten of at most 22). [`message`] decodes such a body whole when it
//! passes every check; [`body`] gives the [`Body`] the serde parse would give, for the checks to
//! reject what they must. Anything else (nesting, escapes, other numbers, every syntax error)
//! they leave to that parse by answering `None`, so errors and rare inputs keep serde_json's
//! exact outcome and messages.

use std::borrow::Cow;

use ioc_contract::catalogue;
use ioc_contract::units;
use serde_json::Number;

use super::{
    channel_of, check_seq, interval_of, judge, parse_ts, sorted_unique, AcceptedValue, Body,
    DecodeContext, Members, Raw, V1Message, ValueMember,
};

/// A body in the common shape.
pub(super) fn body(payload: &[u8]) -> Option<Body<'_>> {
    let mut r = Reader::new(payload)?;
    let mut body = Body::default();
    r.ws();
    // As the serde parse: a member given twice counts once, the last.
    r.object(|r, key| {
        match key {
            "ts" => body.ts = Some(r.scalar()?),
            "seq" => body.seq = Some(r.scalar()?),
            "channel" => body.channel = Some(r.scalar()?),
            "interval_s" => body.interval_s = Some(r.scalar()?),
            "values" => body.values = Some(r.members(|r| r.value_member())?),
            "units" => body.units = Some(r.members(|r| r.scalar())?),
            _ => {
                r.scalar()?;
            }
        }
        Some(())
    })?;
    r.end()?;
    Some(body)
}

/// A number as serde_json's parser yields it.
enum Num {
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Num {
    /// The number as an `f64`, as serde_json's `as_f64` gives it.
    #[inline]
    fn as_f64(self) -> f64 {
        match self {
            Num::U64(v) => v as f64,
            Num::I64(v) => v as f64,
            Num::F64(v) => v,
        }
    }
}

/// 10^0 to 10^22, each exact in an f64 (as serde_json's table has them).
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

struct Reader<'a> {
    text: &'a str,
    /// `text`'s bytes.
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `payload`. Validated as UTF-8 once here rather than string by
    /// string: a body that is not UTF-8 is not the common shape (serde_json refuses it, in a
    /// string or out of one).
    #[inline]
    fn new(payload: &'a [u8]) -> Option<Reader<'a>> {
        Some(Reader {
            text: std::str::from_utf8(payload).ok()?,
            bytes: payload,
            at: 0,
        })
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    #[inline]
    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek() == Some(b)).then(|| self.at += 1)
    }

    /// JSON whitespace, as serde_json skips it.
    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// A string without escapes or control characters, borrowed. (This, `value_member` and
    /// `number` are always inlined: left to the compiler, the v1 step measured 3–6 % slower.)
    #[inline(always)]
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        let len = string_end(&self.bytes[start..])?;
        if self.bytes[start + len] != b'"' {
            return None;
        }
        self.at = start + len + 1;
        // Between two quotes, so on character boundaries.
        self.text.get(start..start + len)
    }

    /// An object, each member's value read by `member`, given its key.
    #[inline(always)]
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            self.ws();
            let key = self.string()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            member(self, key)?;
            self.ws();
            match self.next()? {
                b',' => {}
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// The end of the body: whitespace only.
    fn end(&mut self) -> Option<()> {
        self.ws();
        (self.at == self.bytes.len()).then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)
    }

    /// A scalar member (an array or object is not the common shape).
    fn scalar(&mut self) -> Option<Raw<'a>> {
        Some(match self.peek()? {
            b'"' => Raw::String(Cow::Borrowed(self.string()?)),
            b'n' => {
                self.literal(b"null")?;
                Raw::Null
            }
            b't' => {
                self.literal(b"true")?;
                Raw::Bool
            }
            b'f' => {
                self.literal(b"false")?;
                Raw::Bool
            }
            // What `RawVisitor` makes of each number.
            _ => match self.number()? {
                Num::U64(v) => Raw::Number(v.into()),
                Num::I64(v) => Raw::Number(v.into()),
                Num::F64(v) => Number::from_f64(v).map_or(Raw::Null, Raw::Number),
            },
        })
    }

    /// An entry of `values`: a number, as `ValueMember`'s visitor converts it.
    #[inline(always)]
    fn value_member(&mut self) -> Option<ValueMember<'a>> {
        let start = self.at;
        let value = self.number()?.as_f64();
        let text = self.text.get(start..self.at)?;
        Some(if written_as_read(text, value) {
            ValueMember::Written(value, text)
        } else {
            ValueMember::Number(value)
        })
    }

    /// `values` or `units`: an object of entries read by `entry`, or a scalar.
    fn members<T>(
        &mut self,
        mut entry: impl FnMut(&mut Self) -> Option<T>,
    ) -> Option<Members<'a, T>> {
        if self.peek()? != b'{' {
            return self.scalar().map(Members::Other);
        }
        let mut entries = Vec::with_capacity(8);
        self.object(|r, key| {
            entries.push((Cow::Borrowed(key), entry(r)?));
            Some(())
        })?;
        Some(Members::Object(sorted_unique(entries)))
    }

    /// A number, only where its value is certain to be serde_json's: the digits and the
    /// arithmetic of serde_json's `parse_integer` and `f64_from_parts`, limited to where that
    /// arithmetic is exact and the same whether or not its `float_roundtrip` feature is on.
    #[inline(always)]
    fn number(&mut self) -> Option<Num> {
        let positive = self.eat(b'-').is_none();
        let mut significand: u64 = 0;
        let mut digits = 0;
        let mut digit = |r: &mut Self, significand: &mut u64| -> Option<bool> {
            match r.peek() {
                Some(c @ b'0'..=b'9') => {
                    // 19 digits never overflow a u64.
                    digits += 1;
                    if digits > 19 {
                        return None;
                    }
                    *significand = *significand * 10 + (c - b'0') as u64;
                    r.at += 1;
                    Some(true)
                }
                _ => Some(false),
            }
        };
        match self.peek()? {
            b'0' => {
                self.at += 1;
                // One leading zero only.
                if let Some(b'0'..=b'9') = self.peek() {
                    return None;
                }
            }
            b'1'..=b'9' => while digit(self, &mut significand)? {},
            _ => return None,
        }
        let mut exponent: i32 = 0;
        let mut float = false;
        if self.eat(b'.').is_some() {
            float = true;
            while digit(self, &mut significand)? {
                exponent -= 1;
            }
            if exponent == 0 {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            float = true;
            let negative = match self.peek()? {
                b'-' => {
                    self.at += 1;
                    true
                }
                b'+' => {
                    self.at += 1;
                    false
                }
                _ => false,
            };
            let mut exp: i32 = 0;
            let start = self.at;
            while let Some(c @ b'0'..=b'9') = self.peek() {
                if self.at - start >= 4 {
                    return None;
                }
                exp = exp * 10 + (c - b'0') as i32;
                self.at += 1;
            }
            if self.at == start {
                return None;
            }
            exponent += if negative { -exp } else { exp };
        }
        if !float {
            return Some(if positive {
                Num::U64(significand)
            } else {
                // serde_json's rule, `-0` a float included.
                let neg = (significand as i64).wrapping_neg();
                if neg >= 0 {
                    Num::F64(-(significand as f64))
                } else {
                    Num::I64(neg)
                }
            });
        }
        if significand > 1 << 53 {
            return None;
        }
        let pow = *POW10.get(exponent.unsigned_abs() as usize)?;
        let f = significand as f64;
        let f = if exponent >= 0 { f * pow } else { f / pow };
        Some(Num::F64(if positive { f } else { -f }))
    }
}

/// Where a string's text ends: the first quote, backslash or control byte (below 0x20).
/// Eight bytes at a time (SWAR): the flags of a word's bytes can be wrong only above its first
/// true match (a borrow runs upwards), so the lowest flag is always the first such byte.
#[inline(always)]
pub(super) fn string_end(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte of `x` that is below `n`.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * n as u64) & !x & HIGH;
    let mut at = 0;
    while let Some(word) = bytes.get(at..at + 8) {
        let w = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        let found = below(w ^ (ONES * b'"' as u64), 1)
            | below(w ^ (ONES * b'\\' as u64), 1)
            | below(w, 0x20);
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let rest = bytes[at..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    Some(at + rest)
}

/// Whether serde_json writes `value` as `text`, the JSON number it was read from: a plain
/// decimal with a fraction (`35.2`, `61.0`) and no zero serde_json would drop, of at most 15
/// significant digits (no other decimal that short denotes the same f64, so these are the
/// digits of the shortest round trip), in the range serde_json writes without an exponent.
pub(super) fn written_as_read(text: &str, value: f64) -> bool {
    if !(1e-4..1e15).contains(&value.abs()) {
        return false;
    }
    // On bytes: a `char` pattern costs a memchr call, for numbers this short.
    let text = text.as_bytes();
    let unsigned = text.strip_prefix(b"-").unwrap_or(text);
    let Some(dot) = unsigned.iter().position(|&b| b == b'.') else {
        return false;
    };
    let (int, frac) = (&unsigned[..dot], &unsigned[dot + 1..]);
    if frac.is_empty()
        || !frac.iter().all(u8::is_ascii_digit)
        || (frac.len() > 1 && frac.ends_with(b"0"))
    {
        return false;
    }
    let significant = match (int, frac) {
        (b"0", _) => frac.iter().skip_while(|&&b| b == b'0').count(),
        (_, b"0") => int.len(),
        _ => int.len() + frac.len(),
    };
    significant <= 15
}

/// Most values a message of the common shape may have; a longer one goes the general way.
const MAX_VALUES: usize = 16;

/// A whole v1 message of the common shape that passes every check, decoded straight from the
/// payload: what `checked(body)` makes of it, without building a [`Body`] first (no member
/// lists to allocate, sort and move; values looked up in the catalogue as they are read).
/// Anything that would be rejected, whole or in part, or that is not the common shape (a
/// repeated member, more than [`MAX_VALUES`] values, a value that is not a number, a unit that
/// does not convert), it leaves to the general way by answering `None`, so every rejection and
/// its reason come from there.
pub(super) fn message<'a>(payload: &'a [u8], ctx: &DecodeContext) -> Option<V1Message<'a>> {
    let mut r = Reader::new(payload)?;
    let mut ts = None;
    let mut channel = None;
    let mut interval_s = None;
    let (mut seq, mut have_values, mut have_units) = (false, false, false);
    // Values as read: where the metric is in the catalogue, the value, its text if kept.
    let mut values: [(usize, f64, Option<&'a str>); MAX_VALUES] = [(0, 0.0, None); MAX_VALUES];
    let mut n_values = 0;
    let mut units: [(&'a str, &'a str); MAX_VALUES] = [("", ""); MAX_VALUES];
    let mut n_units = 0;
    r.ws();
    r.object(|r, key| {
        // A member given twice goes the general way (the last counts there).
        match key {
            // The checks' own rules, their rejections dropped (the general way gives them).
            "ts" if ts.is_none() => ts = Some(parse_ts(Some(&r.scalar()?)).ok()?),
            "seq" if !seq => {
                seq = true;
                check_seq(&r.scalar()?).ok()?;
            }
            "channel" if channel.is_none() => channel = Some(channel_of(Some(r.scalar()?)).ok()?),
            "interval_s" if interval_s.is_none() => {
                interval_s = Some(interval_of(Some(&r.scalar()?)).ok()?)
            }
            "values" if !have_values => {
                have_values = true;
                n_values = r.entries(&mut values, |r, key| {
                    let metric = catalogue::position(key)?;
                    let start = r.at;
                    let value = r.number()?.as_f64();
                    let text = r.text.get(start..r.at)?;
                    Some((metric, value, written_as_read(text, value).then_some(text)))
                })?;
            }
            "units" if !have_units => {
                have_units = true;
                if r.peek()? == b'n' {
                    r.literal(b"null")?;
                } else {
                    n_units = r.entries(&mut units, |r, metric| Some((metric, r.string()?)))?;
                }
            }
            "ts" | "seq" | "channel" | "interval_s" | "values" | "units" => return None,
            _ => r.skip_scalar()?,
        }
        Some(())
    })?;
    r.end()?;
    if n_values == 0 {
        return None;
    }
    let ts = ts?;
    // In metric-name order, as the general way decodes them: each value's place by the rank of
    // its metric's name, no names compared. A metric or a unit named twice goes that way.
    let mut by_rank = [0u8; 64];
    let mut ranks = 0u64;
    for (k, &(metric, ..)) in values[..n_values].iter().enumerate() {
        let rank = catalogue::NAME_RANK[metric];
        if ranks & 1 << rank != 0 {
            return None;
        }
        ranks |= 1 << rank;
        by_rank[rank as usize] = k as u8;
    }
    let units = &units[..n_units];
    if (1..units.len()).any(|i| units[..i].iter().any(|u| u.0 == units[i].0)) {
        return None;
    }
    let mut accepted = Vec::with_capacity(n_values);
    while ranks != 0 {
        let (metric, value, json) = values[by_rank[ranks.trailing_zeros() as usize] as usize];
        ranks &= ranks - 1;
        let spec = &catalogue::CATALOGUE[metric];
        let (value, json) = match units.iter().find(|u| u.0 == spec.name) {
            None => (value, json),
            Some((_, unit)) => (units::to_canonical(spec, value, unit).ok()?, None),
        };
        let (quality, quality_reason) = judge(spec, value, ts, ctx);
        accepted.push(AcceptedValue {
            spec,
            value,
            json,
            quality,
            quality_reason,
        });
    }
    Some(V1Message {
        ts,
        channel: channel.unwrap_or(Cow::Borrowed("")),
        interval_s: interval_s.flatten(),
        accepted,
        rejected_values: Vec::new(),
    })
}

impl<'a> Reader<'a> {
    /// An object's entries, each read from its key by `entry` into `into`; their number.
    fn entries<T>(
        &mut self,
        into: &mut [T; MAX_VALUES],
        mut entry: impl FnMut(&mut Self, &'a str) -> Option<T>,
    ) -> Option<usize> {
        let mut n = 0;
        self.object(|r, key| {
            *into.get_mut(n)? = entry(r, key)?;
            n += 1;
            Some(())
        })?;
        Some(n)
    }

    /// A member the checks do not read: a scalar, validated and dropped.
    fn skip_scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'n' => self.literal(b"null"),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            _ => self.number().map(drop),
        }
    }
}
