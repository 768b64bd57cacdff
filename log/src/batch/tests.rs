//! Codec tests: round trips and hostile input.

use bytes::Bytes;
use garam_core::Header;
use proptest::prelude::*;

use super::*;

type Rec = (i64, Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, Option<Vec<u8>>)>);

fn build(records: &[Rec], codec: Compression) -> Bytes {
    let mut b = BatchBuilder::new(codec);
    for (ts, k, v, hs) in records {
        let headers: Vec<Header> =
            hs.iter().map(|(k, v)| Header { key: k.clone(), value: v.clone().map(Bytes::from) }).collect();
        b.push(*ts, k.as_deref(), v.as_deref(), &headers);
    }
    b.finish().unwrap()
}

fn codec() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        Just(Compression::Gzip),
        Just(Compression::Snappy),
        Just(Compression::Lz4),
        Just(Compression::Zstd)
    ]
}

fn records() -> impl Strategy<Value = Vec<Rec>> {
    let bytes = proptest::collection::vec(any::<u8>(), 0..40);
    let header = ("[a-z]{0,8}", proptest::option::of(bytes.clone()));
    proptest::collection::vec(
        (
            0i64..4_000_000_000_000,
            proptest::option::of(bytes.clone()),
            proptest::option::of(bytes),
            proptest::collection::vec(header, 0..3),
        ),
        1..20,
    )
}

proptest! {
    #[test]
    fn roundtrip(recs in records(), codec in codec()) {
        let bytes = build(&recs, codec);
        let batch = Batch::new(bytes).unwrap();
        batch.verify().unwrap();
        let h = batch.header();
        prop_assert_eq!(h.record_count as usize, recs.len());
        prop_assert_eq!(h.last_offset_delta as usize, recs.len() - 1);
        prop_assert_eq!(h.max_timestamp, recs.iter().map(|r| r.0).max().unwrap());
        let got: Vec<ConsumedRecord> = batch.records().unwrap().collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(got.len(), recs.len());
        for (i, (g, r)) in got.iter().zip(&recs).enumerate() {
            prop_assert_eq!(g.offset, i as u64);
            prop_assert_eq!(g.timestamp, r.0);
            prop_assert_eq!(g.key.as_deref(), r.1.as_deref());
            prop_assert_eq!(g.value.as_deref(), r.2.as_deref());
            prop_assert_eq!(g.headers.len(), r.3.len());
        }
    }

    /// Any truncation of a valid batch is rejected or ends iteration; nothing panics.
    #[test]
    fn truncated_input_never_panics(recs in records(), codec in codec(), cut in any::<prop::sample::Index>()) {
        let bytes = build(&recs, codec);
        let cut = cut.index(bytes.len());
        let short = bytes.slice(..cut);
        prop_assert!(Batch::new(short.clone()).is_err());
        let iterated: Vec<_> = BatchIter::new(short).collect();
        prop_assert!(iterated.iter().all(|b| b.is_err()) || iterated.is_empty());
    }

    /// Flipping any byte is caught by the header checks or the CRC; decoding never panics.
    #[test]
    fn corrupted_input_is_detected(recs in records(), codec in codec(), at in any::<prop::sample::Index>(), x in 1u8..=255) {
        let mut raw = build(&recs, codec).to_vec();
        let at = at.index(raw.len());
        raw[at] ^= x;
        let detected = match Batch::new(Bytes::from(raw)) {
            Err(_) => true,
            Ok(b) => {
                let crc_bad = b.verify().is_err();
                // Decoding the records of a corrupt batch must still not panic.
                if let Ok(it) = b.records() { for r in it { let _ = r; } }
                // Bytes outside the CRC: offset (0..8), leader epoch (12..16). Length and magic are checked.
                crc_bad || at < 8 || (12..16).contains(&at)
            }
        };
        prop_assert!(detected, "flip at byte {} went unnoticed", at);
    }

    /// Arbitrary bytes never panic the decoder, and never allocate by a length they claim.
    #[test]
    fn garbage_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
        for b in BatchIter::new(Bytes::from(raw.clone())) {
            if let Ok(b) = b {
                let _ = b.verify();
                if let Ok(it) = b.records() { for r in it { let _ = r; } }
            }
        }
    }
}

#[test]
fn huge_claimed_lengths_are_rejected_without_allocation() {
    let mut b = BatchBuilder::new(Compression::None);
    b.push(0, Some(b"k"), Some(b"v"), &[]);
    let mut raw = b.finish().unwrap().to_vec();
    // Claim a 2 GiB batch: the iterator must treat it as incomplete, not allocate.
    raw[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
    assert!(BatchIter::new(Bytes::from(raw.clone())).next().is_none());
    assert!(Batch::new(Bytes::from(raw)).is_err());

    // A record claiming a huge key inside a well-formed, correctly CRC'd batch.
    let mut b = BatchBuilder::new(Compression::None);
    b.push(0, Some(b"k"), Some(b"v"), &[]);
    let mut raw = b.finish().unwrap().to_vec();
    // record: len varint at 61, attrs, ts delta, offset delta, key len varint at 65
    raw[65] = 0xfe;
    raw.insert(66, 0xff);
    raw.insert(67, 0xff);
    raw.insert(68, 0x0f);
    let len = (raw.len() - 12) as i32;
    raw[8..12].copy_from_slice(&len.to_be_bytes());
    header::store_crc(&mut raw);
    let batch = Batch::new(Bytes::from(raw)).unwrap();
    batch.verify().unwrap();
    let r: Vec<_> = batch.records().unwrap().collect();
    assert!(r[0].is_err());
}

#[test]
fn batches_iterate_in_sequence() {
    let mut buf = Vec::new();
    let mut b = BatchBuilder::new(Compression::Lz4);
    for i in 0..3 {
        b.push(i, Some(b"k"), Some(format!("v{i}").as_bytes()), &[]);
        b.finish_into(&mut buf).unwrap();
    }
    let batches: Vec<Batch> = BatchIter::new(Bytes::from(buf)).collect::<Result<_, _>>().unwrap();
    assert_eq!(batches.len(), 3);
    for b in &batches {
        b.verify().unwrap();
    }
}

/// Regression: a record whose header-count varint ran past the record's end made the remaining-bytes
/// computation underflow (found by `corrupted_input_is_detected` in CI).
#[test]
fn varints_never_read_past_their_record() {
    // A record of 5 bytes: attributes, ts delta 0, offset delta 0, null key, null value. Its header
    // count is missing; the byte after the record (a varint 1) must not be taken for it.
    let mut body = Vec::new();
    put_varint(&mut body, 5);
    body.extend_from_slice(&[0, 0, 0, 0x01, 0x01]);
    body.push(0x02);
    let mut b = BatchBuilder::new(Compression::None);
    b.push(0, None, Some(b"v"), &[]);
    let mut raw = b.finish().unwrap().to_vec();
    raw.truncate(HEADER_LEN);
    raw.extend_from_slice(&body);
    let len = (raw.len() - 12) as i32;
    raw[8..12].copy_from_slice(&len.to_be_bytes());
    header::store_crc(&mut raw);
    let batch = Batch::new(Bytes::from(raw)).unwrap();
    batch.verify().unwrap();
    let results: Vec<_> = batch.records().unwrap().collect();
    assert!(results[0].is_err());
}
