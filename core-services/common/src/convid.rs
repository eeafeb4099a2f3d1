//! Conversation ids (protocol v1): `s_{lo}_{hi}` for a 1:1 pair (smaller user
//! id first), `g_{group_id}` for a group. Only the canonical spelling parses,
//! so one conversation has exactly one id (it is the bus partition key).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConversationId {
    Single { lo: u64, hi: u64 },
    Group(u64),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvIdError {
    #[error("conversation id must look like s_{{lo}}_{{hi}} or g_{{group_id}}")]
    Malformed,
    #[error("1:1 conversation ids list the smaller user id first and two different users")]
    NotCanonical,
}

fn parse_canonical_u64(s: &str) -> Result<u64, ConvIdError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return Err(ConvIdError::Malformed);
    }
    s.parse().map_err(|_| ConvIdError::Malformed)
}

impl ConversationId {
    /// The 1:1 conversation between two different users.
    pub fn single(a: u64, b: u64) -> Result<Self, ConvIdError> {
        if a == b {
            return Err(ConvIdError::NotCanonical);
        }
        Ok(Self::Single { lo: a.min(b), hi: a.max(b) })
    }

    pub fn parse(s: &str) -> Result<Self, ConvIdError> {
        if let Some(rest) = s.strip_prefix("s_") {
            let (a, b) = rest.split_once('_').ok_or(ConvIdError::Malformed)?;
            let (lo, hi) = (parse_canonical_u64(a)?, parse_canonical_u64(b)?);
            if lo >= hi {
                return Err(ConvIdError::NotCanonical);
            }
            Ok(Self::Single { lo, hi })
        } else if let Some(rest) = s.strip_prefix("g_") {
            Ok(Self::Group(parse_canonical_u64(rest)?))
        } else {
            Err(ConvIdError::Malformed)
        }
    }

    /// For a 1:1 conversation, the other participant (None if `user` is not one).
    pub fn peer_of(&self, user: u64) -> Option<u64> {
        match *self {
            Self::Single { lo, hi } if lo == user => Some(hi),
            Self::Single { lo, hi } if hi == user => Some(lo),
            _ => None,
        }
    }

    pub fn is_group(&self) -> bool {
        matches!(self, Self::Group(_))
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single { lo, hi } => write!(f, "s_{lo}_{hi}"),
            Self::Group(g) => write!(f, "g_{g}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_orders_the_pair() {
        let c = ConversationId::single(9, 3).unwrap();
        assert_eq!(c.to_string(), "s_3_9");
        assert_eq!(c, ConversationId::single(3, 9).unwrap());
        assert_eq!(c.peer_of(3), Some(9));
        assert_eq!(c.peer_of(9), Some(3));
        assert_eq!(c.peer_of(4), None);
        assert_eq!(ConversationId::single(5, 5), Err(ConvIdError::NotCanonical));
    }

    #[test]
    fn parse_round_trips_and_rejects_non_canonical() {
        for s in ["s_1_2", "g_77", "s_18446744073709551614_18446744073709551615"] {
            assert_eq!(ConversationId::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(ConversationId::parse("s_2_1"), Err(ConvIdError::NotCanonical));
        assert_eq!(ConversationId::parse("s_2_2"), Err(ConvIdError::NotCanonical));
        for bad in [
            "",
            "s_",
            "s_1",
            "s_1_",
            "s__2",
            "s_01_2",
            "s_+1_2",
            "g_",
            "g_x",
            "x_1_2",
            "s_1_2_3",
            "g_18446744073709551616",
            " s_1_2",
        ] {
            assert_eq!(ConversationId::parse(bad), Err(ConvIdError::Malformed), "{bad:?}");
        }
    }
}
