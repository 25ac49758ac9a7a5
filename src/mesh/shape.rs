//! The shape of a CBOR message, measured before anything is decoded or allocated: how many items
//! it holds (array elements, map entries, strings, numbers) and how deeply it nests. A message
//! of a few megabytes of one-byte items would otherwise decode into hundreds of megabytes of
//! vectors, and a deeply nested one would exhaust the decoder's recursion; both are refused
//! here, in one pass over the bytes, without recursion.

/// Most items one message may hold: what the largest honest messages need (a hello listing 4,096
/// datasets twice, each digest 33 items; a 4,096-operation roster) with room, and what bounds a
/// decoded message to some 32 MB of vectors whatever its bytes.
pub const MAX_ITEMS: usize = 1 << 20;
/// Deepest nesting of arrays, maps and tags one message may have.
pub const MAX_DEPTH: usize = 64;

/// Why a message's shape was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// More items than [`MAX_ITEMS`].
    #[error("more than {MAX_ITEMS} items")]
    TooManyItems,
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// Not well-formed CBOR (truncated, a reserved code, a length past the end).
    #[error("malformed CBOR: {0}")]
    Malformed(&'static str),
}

/// What is left to read of one open container.
enum Open {
    /// A definite count of items.
    Items(u64),
    /// Items until a break byte.
    UntilBreak,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Result<u8, Error> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or(Error::Malformed("truncated"))?;
        self.at += 1;
        Ok(b)
    }

    /// The argument of an initial byte whose low five bits are `info`.
    fn argument(&mut self, info: u8) -> Result<u64, Error> {
        let n = match info {
            0..=23 => return Ok(u64::from(info)),
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            _ => return Err(Error::Malformed("reserved length code")),
        };
        let mut v = 0u64;
        for _ in 0..n {
            v = (v << 8) | u64::from(self.byte()?);
        }
        Ok(v)
    }

    fn skip(&mut self, n: u64) -> Result<(), Error> {
        let left = (self.bytes.len() - self.at) as u64;
        if n > left {
            return Err(Error::Malformed("a string runs past the end"));
        }
        self.at += n as usize;
        Ok(())
    }
}

/// Counts the items of the one CBOR value in `bytes` and checks its depth.
pub fn check(bytes: &[u8]) -> Result<usize, Error> {
    let mut c = Cursor { bytes, at: 0 };
    let mut stack: Vec<Open> = Vec::new();
    let mut items = 0usize;
    // The top level is one value.
    let mut want_value = true;
    loop {
        if !want_value {
            match stack.last_mut() {
                None => break,
                Some(Open::Items(0)) => {
                    stack.pop();
                    continue;
                }
                Some(Open::Items(n)) => *n -= 1,
                Some(Open::UntilBreak) => {
                    if c.bytes.get(c.at) == Some(&0xff) {
                        c.at += 1;
                        stack.pop();
                        continue;
                    }
                }
            }
        }
        want_value = false;
        items += 1;
        if items > MAX_ITEMS {
            return Err(Error::TooManyItems);
        }
        let initial = c.byte()?;
        let (major, info) = (initial >> 5, initial & 0x1f);
        match (major, info) {
            (2 | 3, 31) => {
                // An indefinite string: definite chunks until a break.
                loop {
                    let b = c.byte()?;
                    if b == 0xff {
                        break;
                    }
                    if b >> 5 != major || b & 0x1f == 31 {
                        return Err(Error::Malformed("a bad chunk in an indefinite string"));
                    }
                    let n = c.argument(b & 0x1f)?;
                    c.skip(n)?;
                }
            }
            (0 | 1 | 7, _) => {
                if major == 7 && info == 31 {
                    return Err(Error::Malformed("a break outside a container"));
                }
                c.argument(info)?;
            }
            (2 | 3, _) => {
                let n = c.argument(info)?;
                c.skip(n)?;
            }
            (4 | 5, 31) => stack.push(Open::UntilBreak),
            (4 | 5, _) => {
                let n = c.argument(info)?;
                // A map's entries are two values each.
                let n = if major == 5 { n.saturating_mul(2) } else { n };
                if n > MAX_ITEMS as u64 {
                    return Err(Error::TooManyItems);
                }
                stack.push(Open::Items(n));
            }
            (6, _) => {
                c.argument(info)?;
                // A tag wraps exactly one value.
                stack.push(Open::Items(1));
            }
            _ => return Err(Error::Malformed("unknown major type")),
        }
        if stack.len() > MAX_DEPTH {
            return Err(Error::TooDeep);
        }
    }
    if c.at != bytes.len() {
        return Err(Error::Malformed("trailing bytes"));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cbor<T: serde::Serialize>(v: &T) -> Vec<u8> {
        cbor4ii::serde::to_vec(Vec::new(), v).expect("encode")
    }

    #[test]
    fn counts_items_of_what_the_codec_writes() {
        assert_eq!(check(&cbor(&7u32)), Ok(1));
        assert_eq!(check(&cbor(&vec![1u8, 2, 3])), Ok(4));
        let m: std::collections::BTreeMap<String, Vec<u8>> =
            [("a".into(), vec![1]), ("b".into(), vec![])].into();
        // map + 2 keys + 2 arrays + 1 element
        assert_eq!(check(&cbor(&m)), Ok(6));
        let bufs = vec![serde_bytes::ByteBuf::from(vec![0u8; 10]); 3];
        assert_eq!(check(&cbor(&bufs)), Ok(4));
        assert_eq!(check(&cbor(&(Some(1u8), None::<u8>, "x"))), Ok(4));
    }

    #[test]
    fn refuses_floods_depth_and_malformed_input_without_allocating() {
        // A definite array claiming a billion items, and a real flood of empty byte strings.
        assert_eq!(check(&[0x9a, 0x40, 0, 0, 0]), Err(Error::TooManyItems));
        let mut flood = vec![0x9a];
        flood.extend(((MAX_ITEMS + 1) as u32).to_be_bytes());
        flood.extend(std::iter::repeat_n(0x40, MAX_ITEMS + 1));
        assert_eq!(check(&flood), Err(Error::TooManyItems));
        let mut deep = vec![0x81; MAX_DEPTH + 1];
        deep.push(0x00);
        assert_eq!(check(&deep), Err(Error::TooDeep));
        let mut ok = vec![0x81; MAX_DEPTH];
        ok.push(0x00);
        assert!(check(&ok).is_ok());
        // Indefinite containers and strings.
        assert_eq!(check(&[0x9f, 0x01, 0x5f, 0x41, 0xaa, 0xff, 0xff]), Ok(3));
        for bad in [
            &[][..],
            &[0x82, 0x01],
            &[0x5a, 0, 0, 0, 9, 1],
            &[0xff],
            &[0x1c],
            &[0x01, 0x02],
        ] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
    }
}
