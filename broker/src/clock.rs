//! The broker's wall clock: milliseconds since the Unix epoch, as Kafka
//! stamps records, expires producers and times group sessions.

/// Wall-clock milliseconds since the epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}
