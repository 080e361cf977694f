//! One delegation link's checks, and the audience rule across links, for [`super::verify_chain`].

use std::time::SystemTime;

use agentmesh_spiffe::SpiffeId;

use super::{
    ChainConfig, ChainError, LINK_TYP, LinkClaims, LinkHeader, MAX_LINK_LEN, decode_json, hash_of,
    unix,
};
use crate::jws::{self, JwsError};
use crate::token::UserClaims;

/// Verifies link number `index` (from 1), whose predecessor in the chain is `prev` (the user
/// token for the first link), against the request's `jti` and `user`. Returns the actor it
/// names and its `aud`.
pub(super) fn link(
    index: usize,
    link: &str,
    prev: &str,
    jti: &str,
    user: &UserClaims,
    config: &ChainConfig,
    now: SystemTime,
) -> Result<(SpiffeId, Option<String>), ChainError> {
    let leeway = i64::try_from(config.leeway.as_secs()).unwrap_or(0);
    let malformed = |reason: &str| ChainError::LinkMalformed {
        index,
        reason: reason.to_owned(),
    };
    if link.len() > MAX_LINK_LEN {
        return Err(malformed("longer than 16 KiB"));
    }
    let mut parts = link.split('.');
    let (Some(h64), Some(c64), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected three '.'-separated segments"));
    };
    let header: LinkHeader =
        decode_json(h64).ok_or_else(|| malformed("header is not base64url json"))?;
    if header.typ.as_deref() != Some(LINK_TYP) {
        return Err(malformed(&format!(
            "typ is {:?}, not {LINK_TYP:?}",
            header.typ
        )));
    }
    // Read the claimed actor first, then require the signature to be that actor's.
    let claims: LinkClaims = decode_json(c64).ok_or_else(|| {
        malformed("claims are not base64url json with sub, act.sub, ujti, prev, iat, exp")
    })?;
    let actor: SpiffeId = claims
        .act
        .sub
        .parse()
        .map_err(|e| malformed(&format!("act.sub is not a spiffe id: {e}")))?;
    jws::verify(link, &config.roots, &actor, now).map_err(|e| match e {
        JwsError::WrongSigner(e) => ChainError::SignerMismatch {
            index,
            claimed: actor.to_string(),
            reason: e.to_string(),
        },
        JwsError::BadSignature => ChainError::LinkBadSignature { index },
        JwsError::Malformed(m) => ChainError::LinkMalformed { index, reason: m },
        JwsError::UnsupportedAlg(alg) => ChainError::LinkMalformed {
            index,
            reason: format!("alg {alg:?}; only ES256 is accepted"),
        },
        other => ChainError::LinkUntrusted {
            index,
            reason: other.to_string(),
        },
    })?;
    if claims.ujti != jti {
        return Err(ChainError::ReplayedLink {
            index,
            reason: format!(
                "it is bound to user token {:?}, not this request's {jti:?}",
                claims.ujti
            ),
        });
    }
    if claims.sub != user.sub {
        return Err(ChainError::ReplayedLink {
            index,
            reason: format!("it is for user {:?}, not {:?}", claims.sub, user.sub),
        });
    }
    if claims.prev != hash_of(prev) {
        return Err(ChainError::BrokenChain { index });
    }
    if unix(now) > claims.exp.saturating_add(leeway) {
        return Err(ChainError::LinkExpired {
            index,
            exp: claims.exp,
        });
    }
    if claims.exp > user.exp {
        return Err(malformed("exp is later than the user token's"));
    }
    Ok((actor, claims.aud))
}

/// Each link's `aud` must name the hop that came next, or `me` (this service) for the last
/// link; with no `me` (an auditor), the last link only needs an `aud`.
pub(super) fn audiences(
    hops: &[SpiffeId],
    auds: &[Option<String>],
    me: Option<&SpiffeId>,
) -> Result<(), ChainError> {
    for (i, aud) in auds.iter().enumerate() {
        let Some(aud) = aud else {
            return Err(ChainError::LinkNoAudience { index: i + 1 });
        };
        let next = match hops.get(i + 1) {
            Some(next) => next,
            None => match me {
                Some(me) => me,
                None => continue,
            },
        };
        if *aud != next.to_string() {
            return Err(ChainError::LinkWrongAudience {
                index: i + 1,
                aud: aud.clone(),
                next: next.to_string(),
            });
        }
    }
    Ok(())
}
