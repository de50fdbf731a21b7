#![no_main]

use ioc_normalize::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ioc_normalize_fuzz::check(Format::IocJson, data);
});
