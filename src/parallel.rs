//! Spreading read-only work over a few threads: catch-up and restart read thousands of records
//! and decode hundreds of changes from one document, which one core does alone otherwise.

/// At most this many threads work at once.
const MAX_THREADS: usize = 4;

/// `f` over every item, in order: on up to [`MAX_THREADS`] scoped threads when there are at
/// least `min` items (a threshold the caller picks by the cost of one item), else on the
/// calling thread.
/// Blocking; a panic in `f` is raised again here.
pub(crate) fn map<T: Sync, U: Send>(items: &[T], min: usize, f: impl Fn(&T) -> U + Sync) -> Vec<U> {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let threads = cores.min(MAX_THREADS);
    if threads < 2 || items.len() < min.max(2) {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let parts: Vec<_> = items
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(f).collect::<Vec<U>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_order_of_the_items_above_and_below_the_threshold() {
        for n in [0, 1, 5, 255, 256, 1_001] {
            let items: Vec<u64> = (0..n).collect();
            let doubled = super::map(&items, 256, |x| x * 2);
            assert_eq!(
                doubled,
                items.iter().map(|x| x * 2).collect::<Vec<_>>(),
                "n = {n}"
            );
        }
    }
}
