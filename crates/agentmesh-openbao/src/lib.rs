//! agentmesh-openbao: a small client for the parts of the OpenBao (and Vault) HTTP API that
//! agentmesh uses: token, AppRole and JWT login, PKI intermediate signing, and KV v2 reads.
//! Not a general Vault SDK, and not where keys are made or certificates checked: it carries
//! requests and answers, the CA and the gateway decide what to do with them.
//!
//! It is hyper's client over rustls (*ring*), the same stack the gateway already uses for
//! providers, so the workspace carries no second HTTP client.
#![forbid(unsafe_code)]

mod client;

pub use client::{
    KvSecret, Login, MAX_ANSWER_BYTES, OpenBao, OpenBaoError, Secret, SignedIntermediate,
};
