#![no_main]

use ioc_normalize::camera::{decode_camera, PlateKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ctx = ioc_normalize_fuzz::ctx();
    match decode_camera(data, &ctx) {
        Ok(e) => {
            assert!(e.speed_kmh.is_none_or(f64::is_finite), "{e:?}");
            // Whatever the plate, its pseudonym is `p_` and 32 hex digits, and never contains it.
            let p = PlateKey::new("fuzz").expect("a key").pseudonym(&e.plate);
            assert!(p.len() == 34 && p.starts_with("p_"), "{p}");
            assert!(p[2..].bytes().all(|b| b.is_ascii_hexdigit()), "{p}");
        }
        Err(r) => assert!(!r.reason.is_empty()),
    }
});
