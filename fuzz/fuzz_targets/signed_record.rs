//! Signed node records (`openred_core::record`) on arbitrary bytes, as the
//! directory reads them from a registration and a client from a discovery
//! answer or a token. Decoding must never panic; a record it accepts is
//! exactly its input (no trailing bytes, one encoding per record), decodes
//! again to the same record, and carries a canonical URL.

#![no_main]

use libfuzzer_sys::fuzz_target;
use openred_core::{ApiUrl, SignedRecord, UnixTime};

fuzz_target!(|data: &[u8]| {
    let Ok(record) = SignedRecord::decode(data) else {
        return;
    };
    assert_eq!(
        record.as_bytes(),
        data,
        "decode kept other bytes than its input"
    );
    let again = SignedRecord::decode(record.as_bytes()).expect("an accepted record decodes again");
    assert_eq!(again, record, "decoding is not deterministic");
    let content = record.record();
    assert!(
        content.expires_at > content.issued_at,
        "a record expiring before its issue passed"
    );
    assert_eq!(
        ApiUrl::parse_canonical(content.api_url.as_str()).as_ref(),
        Ok(&content.api_url),
        "the record's URL is not canonical"
    );
    // Time checks on extreme clocks must answer, not overflow.
    for now in [0, content.issued_at.0, content.expires_at.0, u64::MAX] {
        let _ = record.check_fresh(UnixTime(now), u64::MAX);
        let _ = record.check_fresh(UnixTime(now), 0);
        let _ = record.check_unexpired(UnixTime(now));
    }
});
