//! Leader epochs as requests carry them: Fetch, ListOffsets and
//! OffsetForLeaderEpoch name the epoch the client believes current
//! (`current_leader_epoch`; any negative value, normally -1, means "don't
//! check", as Kafka reads it). Kafka's rule
//! (`Partition.localLogWithEpochOrThrow`): an older epoch than the
//! leader's is fenced (`FENCED_LEADER_EPOCH`: the client's metadata is
//! stale), a newer one is unknown (`UNKNOWN_LEADER_EPOCH`: this broker has
//! not caught up yet); both are retriable after a metadata refresh.

use kafki_net::kafka_protocol::error::ResponseError;

/// `current_leader_epoch` when the client does not ask for a check.
pub const NO_EPOCH: i32 = -1;

/// Checks a request's `current_leader_epoch` against the leader's.
pub fn check_current_leader_epoch(requested: i32, leader_epoch: i32) -> Result<(), i16> {
    if requested < 0 || requested == leader_epoch {
        Ok(())
    } else if requested < leader_epoch {
        Err(ResponseError::FencedLeaderEpoch.code())
    } else {
        Err(ResponseError::UnknownLeaderEpoch.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_epochs_are_fenced_newer_ones_unknown() {
        assert_eq!(check_current_leader_epoch(NO_EPOCH, 3), Ok(()));
        assert_eq!(check_current_leader_epoch(3, 3), Ok(()));
        assert_eq!(check_current_leader_epoch(2, 3), Err(74));
        assert_eq!(check_current_leader_epoch(4, 3), Err(75));
        assert_eq!(check_current_leader_epoch(-2, 5), Ok(()));
    }
}
