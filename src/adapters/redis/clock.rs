//! The wall clock the main thread reads. Replicated commands never read it directly:
//! they run at their entry's time (see `execute` and `core::expiry`).

pub fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}
