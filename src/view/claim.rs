//! What a change's bytes claim, read before Automerge parses them. Automerge 0.12 inflates a
//! compressed change chunk whole (a few megabytes of DEFLATE can claim gigabytes), and walks
//! every operation of a change as it parses it, while its columns are run-length encoded (a few
//! bytes can claim billions of operations): both cost memory or time in proportion to what the
//! bytes claim, not to their size. A member's node sends its changes uncompressed
//! (`Change::raw_bytes`), so a compressed chunk is refused; and the operations a change claims
//! are counted here, in one pass over its bytes, and refused past [`MAX_CHANGE_OPS`].

/// Most operations one change may hold: one per byte of the largest API request body (an honest
/// write needs at least two bytes of JSON per operation, `0,` or `[]`; 8 Mi operations).
pub const MAX_CHANGE_OPS: u64 = crate::config::MAX_BODY_BYTES as u64;
/// Operations the changes of one batch (one apply) may claim together; the first change of a
/// batch is taken whatever it claims (up to [`MAX_CHANGE_OPS`]), and the changes past the budget
/// wait for a later batch. Bounds the memory and time one batch costs before it is judged.
pub const BATCH_OPS: u64 = 1 << 20;

/// The chunk's first bytes.
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// The chunk type of an uncompressed change.
const CHANGE: u8 = 1;
/// The id of the action column, which holds one entry per operation: Automerge walks a
/// change's operations until it ends (a column spec is its id, a DEFLATE bit and a type).
const ACTION_COLUMN: u64 = 4;
/// The specs of the predecessors' actor and counter columns, which hold one entry per
/// predecessor: Automerge reads as many as each operation's count (its own column) claims,
/// until they end.
const PRED_COLUMNS: [u64; 2] = [0x71, 0x73];
/// The column spec's DEFLATE bit.
const DEFLATE: u64 = 0x08;

/// Why a change's bytes were refused before Automerge saw them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not an uncompressed change chunk.
    #[error("not an uncompressed change chunk (type {0}); nodes send changes uncompressed")]
    NotARawChange(u8),
    /// Claims more operations than a change may hold.
    #[error("claims {0} or more operations; a change holds at most {MAX_CHANGE_OPS}")]
    TooManyOps(u64),
    /// The bytes end or overflow where a field should be.
    #[error("malformed change: {0}")]
    Malformed(&'static str),
}

/// Refuses `bytes` unless they are one uncompressed change chunk claiming at most
/// [`MAX_CHANGE_OPS`] operations and as many predecessors (an honest operation names one, or a
/// few where values conflict; what the bytes claim otherwise is for Automerge to judge).
pub fn check(bytes: &[u8]) -> Result<(), Refusal> {
    match ops(bytes)? {
        n if n > MAX_CHANGE_OPS => Err(Refusal::TooManyOps(n)),
        _ => Ok(()),
    }
}

/// What a batch's budget counts of `bytes`: the operations they claim (0 for bytes that are
/// not a change: [`check`] refuses those).
pub fn claimed(bytes: &[u8]) -> u64 {
    ops(bytes).unwrap_or(0)
}

/// Whether a change claiming `next` operations joins a batch whose changes claim `taken`
/// together: the first always does, the others within [`BATCH_OPS`].
pub fn joins_batch(taken: u64, next: u64) -> bool {
    taken == 0 || taken.saturating_add(next) <= BATCH_OPS
}

/// The most entries an uncompressed change chunk claims in its action column or in one of its
/// predecessor columns (counted up to just past [`MAX_CHANGE_OPS`]).
fn ops(bytes: &[u8]) -> Result<u64, Refusal> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4)? != MAGIC {
        return Err(Refusal::Malformed("no magic bytes"));
    }
    r.take(4)?; // checksum (Automerge 0.12 does not check it either)
    let kind = r.take(1)?[0];
    if kind != CHANGE {
        return Err(Refusal::NotARawChange(kind));
    }
    r.uleb()?; // the chunk's length
    let deps = r.count(32)?;
    r.take(deps * 32)?;
    r.skip_prefixed()?; // actor
    r.uleb()?; // seq
    r.uleb()?; // start op
    r.sleb()?; // time
    r.skip_prefixed()?; // message
    for _ in 0..r.count(1)? {
        r.skip_prefixed()?; // other actors
    }
    let mut before = 0usize;
    let mut actions = Vec::new();
    for _ in 0..r.count(2)? {
        let (spec, len) = (r.uleb()?, r.len()?);
        let end = before
            .checked_add(len)
            .ok_or(Refusal::Malformed("column lengths"))?;
        if spec >> 4 == ACTION_COLUMN || PRED_COLUMNS.contains(&(spec & !DEFLATE)) {
            actions.push(before..end);
        }
        before = end;
    }
    let columns = r.take(before)?;
    let mut most = 0;
    for range in actions {
        let column = Reader {
            bytes: &columns[range],
            at: 0,
        };
        most = most.max(column.entries()?);
    }
    Ok(most)
}

/// A cursor over bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Refusal> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len());
        let end = end.ok_or(Refusal::Malformed("ends early"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn uleb(&mut self) -> Result<u64, Refusal> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(Refusal::Malformed("integer overflows"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Refusal::Malformed("integer overflows"))
    }

    fn sleb(&mut self) -> Result<i64, Refusal> {
        let mut value = 0i64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            value |= i64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                if shift < 57 && byte & 0x40 != 0 {
                    value |= -1i64 << (shift + 7);
                }
                return Ok(value);
            }
        }
        Err(Refusal::Malformed("integer overflows"))
    }

    /// A length within the bytes left.
    fn len(&mut self) -> Result<usize, Refusal> {
        let n = usize::try_from(self.uleb()?).map_err(|_| Refusal::Malformed("length"))?;
        match n <= self.bytes.len() - self.at {
            true => Ok(n),
            false => Err(Refusal::Malformed("ends early")),
        }
    }

    /// A count of items of at least `each` bytes that the bytes left can hold.
    fn count(&mut self, each: usize) -> Result<usize, Refusal> {
        let n = usize::try_from(self.uleb()?).map_err(|_| Refusal::Malformed("count"))?;
        match n
            .checked_mul(each)
            .is_some_and(|b| b <= self.bytes.len() - self.at)
        {
            true => Ok(n),
            false => Err(Refusal::Malformed("ends early")),
        }
    }

    fn skip_prefixed(&mut self) -> Result<(), Refusal> {
        let n = self.len()?;
        self.take(n).map(|_| ())
    }

    /// The entries of a run-length encoded integer column: runs of one value (a positive
    /// count, then the value), literal runs (a negative count, then that many values) and null
    /// runs (zero, then the count). Stops counting past [`MAX_CHANGE_OPS`].
    fn entries(mut self) -> Result<u64, Refusal> {
        let mut total = 0u64;
        while self.at < self.bytes.len() && total <= MAX_CHANGE_OPS {
            let count = self.sleb()?;
            total = total.saturating_add(match count {
                0 => self.uleb()?,
                n if n > 0 => {
                    self.uleb()?;
                    n.unsigned_abs()
                }
                n => {
                    for _ in 0..n.unsigned_abs() {
                        self.uleb()?;
                    }
                    n.unsigned_abs()
                }
            });
        }
        Ok(total)
    }
}

#[cfg(test)]
#[path = "claim_tests.rs"]
mod tests;
