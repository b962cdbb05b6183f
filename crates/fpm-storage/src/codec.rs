//! The compact encoding of one series' raw samples within one minute (a "chunk").
//!
//! Layout: a varint sample count, then per sample a timestamp and a value. Timestamps are
//! offsets in ms from the chunk's minute start, written as zigzag delta-of-delta varints
//! (a steady collection interval costs one byte). Values that are small integers (most
//! php-fpm metrics) are written as a zigzag varint of the difference to the previous
//! integral value, tagged with a 0 low bit; anything else as a 1 tag and the 8 raw bytes.

/// A chunk that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("chunk ends in the middle of sample {index}")]
    Truncated { index: usize },
    #[error("chunk varint at byte {offset} is longer than 10 bytes")]
    VarintTooLong { offset: usize },
    #[error("chunk claims {count} samples, more than a minute can hold")]
    TooMany { count: u64 },
    #[error("chunk has {extra} trailing bytes")]
    Trailing { extra: usize },
    #[error("chunk sample {index} has timestamp offset {offset} outside the minute")]
    OutOfRange { index: usize, offset: i64 },
}

/// Integral values up to this magnitude take the varint path; beyond it f64 is lossy anyway.
const MAX_EXACT: f64 = 9_007_199_254_740_992.0; // 2^53

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn varint(&mut self, index: usize) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut v: u64 = 0;
        for shift in (0..70).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(DecodeError::Truncated { index });
            };
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(DecodeError::VarintTooLong { offset: start });
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::VarintTooLong { offset: start })
    }

    fn f64(&mut self, index: usize) -> Result<f64, DecodeError> {
        let bytes = self
            .buf
            .get(self.pos..self.pos + 8)
            .ok_or(DecodeError::Truncated { index })?;
        self.pos += 8;
        let mut a = [0u8; 8];
        a.copy_from_slice(bytes);
        Ok(f64::from_le_bytes(a))
    }
}

fn as_exact_int(v: f64) -> Option<i64> {
    // -0.0 must keep its sign bit, so it goes the raw way.
    if v.is_finite()
        && v.fract() == 0.0
        && v.abs() <= MAX_EXACT
        && !(v == 0.0 && v.is_sign_negative())
    {
        Some(v as i64)
    } else {
        None
    }
}

/// Encodes samples given as `(offset_ms, value)` with strictly increasing offsets in
/// `0..60_000` (the caller sorts and de-duplicates).
pub fn encode(samples: &[(i64, f64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + samples.len() * 3);
    put_varint(&mut out, samples.len() as u64);
    let (mut prev_ts, mut prev_delta, mut prev_int) = (0i64, 0i64, 0i64);
    for &(ts, v) in samples {
        let delta = ts - prev_ts;
        put_varint(&mut out, zigzag(delta - prev_delta));
        prev_ts = ts;
        prev_delta = delta;
        match as_exact_int(v) {
            Some(i) => {
                put_varint(&mut out, zigzag(i - prev_int) << 1);
                prev_int = i;
            }
            None => {
                put_varint(&mut out, 1);
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    out
}

/// Decodes a chunk back into `(offset_ms, value)` pairs.
pub fn decode(buf: &[u8]) -> Result<Vec<(i64, f64)>, DecodeError> {
    let mut c = Cursor { buf, pos: 0 };
    let count = c.varint(0)?;
    if count > 60_000 {
        return Err(DecodeError::TooMany { count });
    }
    let mut out = Vec::with_capacity(count as usize);
    let (mut prev_ts, mut prev_delta, mut prev_int) = (0i64, 0i64, 0i64);
    for index in 0..count as usize {
        let dod = unzigzag(c.varint(index)?);
        let delta = prev_delta.saturating_add(dod);
        let ts = prev_ts.saturating_add(delta);
        if !(0..60_000).contains(&ts) {
            return Err(DecodeError::OutOfRange { index, offset: ts });
        }
        prev_ts = ts;
        prev_delta = delta;
        let tag = c.varint(index)?;
        let v = if tag & 1 == 0 {
            let i = prev_int.saturating_add(unzigzag(tag >> 1));
            prev_int = i;
            i as f64
        } else {
            c.f64(index)?
        };
        out.push((ts, v));
    }
    if c.pos != buf.len() {
        return Err(DecodeError::Trailing {
            extra: buf.len() - c.pos,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn steady_integer_series_costs_about_two_bytes_per_sample() {
        let samples: Vec<(i64, f64)> = (0..60).map(|i| (i * 1000, (i % 7) as f64)).collect();
        let enc = encode(&samples);
        assert!(enc.len() <= 2 * 60 + 4, "{} bytes", enc.len());
        assert_eq!(decode(&enc).unwrap(), samples);
    }

    #[test]
    fn special_values_round_trip_bit_exact() {
        let samples = vec![
            (0, -0.0),
            (1, 0.5),
            (2, 1e300),
            (3, -9.0e15),
            (4, f64::NAN),
            (59_999, 3.0),
        ];
        let dec = decode(&encode(&samples)).unwrap();
        for (a, b) in samples.iter().zip(&dec) {
            assert_eq!(a.0, b.0);
            assert_eq!(a.1.to_bits(), b.1.to_bits());
        }
    }

    #[test]
    fn corrupt_chunks_are_errors_not_panics() {
        assert_eq!(decode(&[]), Err(DecodeError::Truncated { index: 0 }));
        assert_eq!(decode(&[2, 0, 0]), Err(DecodeError::Truncated { index: 1 }));
        assert!(matches!(
            decode(&[0xff; 12]),
            Err(DecodeError::VarintTooLong { .. })
        ));
        assert_eq!(decode(&[0, 9]), Err(DecodeError::Trailing { extra: 1 }));
        assert_eq!(
            decode(&[1, 0x01, 0]),
            Err(DecodeError::OutOfRange {
                index: 0,
                offset: -1
            })
        );
        assert_eq!(
            decode(&[1, 0xc0, 0xa9, 0x07, 0]),
            Err(DecodeError::OutOfRange {
                index: 0,
                offset: 60_000
            })
        );
    }

    proptest! {
        #[test]
        fn round_trip(mut offs in proptest::collection::btree_set(0i64..60_000, 0..200),
                      vals in proptest::collection::vec(any::<f64>(), 200)) {
            let samples: Vec<(i64, f64)> =
                std::mem::take(&mut offs).into_iter().zip(vals).collect();
            let dec = decode(&encode(&samples)).unwrap();
            prop_assert_eq!(dec.len(), samples.len());
            for (a, b) in samples.iter().zip(&dec) {
                prop_assert_eq!(a.0, b.0);
                prop_assert_eq!(a.1.to_bits(), b.1.to_bits());
            }
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }
    }
}
