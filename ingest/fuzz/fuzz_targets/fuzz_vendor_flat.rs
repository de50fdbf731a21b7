#![no_main]

use ioc_ingest::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ioc_ingest_fuzz::check(Format::VendorFlat, data);
});
