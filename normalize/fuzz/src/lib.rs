//! What every decoder must uphold whatever bytes it is given, checked by the fuzz targets.

use ioc_contract::{catalogue, Quality};
use ioc_normalize::decode::{DecodeContext, Decoded};
use ioc_normalize::flat::Profile;
use ioc_normalize::Format;

pub fn ctx() -> DecodeContext {
    DecodeContext {
        received_at: 1_795_680_300_000,
        max_future_skew_ms: 300_000,
        max_payload_bytes: 65_536,
        utc_offset_ms: 7 * 3_600_000,
    }
}

/// Decodes `data` as `format` and checks every reading and rejection it gives.
pub fn check(format: Format, data: &[u8]) {
    let ctx = ctx();
    let profile = Profile::flat_gateway();
    match format.decode("dev-1", data, "m1", &ctx, &profile) {
        Ok(decoded) => check_decoded(&decoded, &ctx),
        Err(r) => assert!(!r.reason.is_empty(), "a rejection says why"),
    }
}

pub fn check_decoded(d: &Decoded, ctx: &DecodeContext) {
    for r in &d.readings {
        assert!(r.value.is_finite(), "{r:?}");
        let spec =
            catalogue::lookup(&r.metric).unwrap_or_else(|| panic!("{r:?}: not in the catalogue"));
        assert_eq!(r.unit, spec.unit, "{r:?}");
        assert_eq!(
            r.quality == Quality::Good,
            r.quality_reason.is_empty(),
            "{r:?}"
        );
        assert!(spec.in_range(r.value) || r.quality == Quality::Bad, "{r:?}");
        assert!(
            r.interval_s.is_none_or(|i| i.is_finite() && i > 0.0),
            "{r:?}"
        );
        assert_eq!(
            (r.device_id.as_str(), r.message_id.as_str()),
            ("dev-1", "m1")
        );
        assert_eq!(r.received_at, ctx.received_at);
        // It reaches the readings topic: it must serialize and read back the same.
        let json = serde_json::to_vec(r).expect("a reading serializes");
        let back: ioc_contract::Reading = serde_json::from_slice(&json).expect("and reads back");
        assert_eq!(&back.metric, &r.metric);
    }
    for v in &d.rejected_values {
        assert!(!v.reason.is_empty(), "{v:?}");
    }
}
