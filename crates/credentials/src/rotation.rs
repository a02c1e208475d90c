//! Rotation: stage the new credential beside the current one, verify it
//! with the vendor, then promote it or discard it — every step journaled
//! with the old and new fingerprints.
//!
//! The vendor call is not this crate's: the caller passes a [`Verifier`]
//! (egress makes the request) and a [`Journal`] (the audit log), so the
//! workflow is here and the transport and the log stay where they are.

use crate::{CredentialKey, CredentialMeta, Fingerprint, Secret, Vault, VaultError};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The journal's error for a verify request the vendor answered with a
/// non-2xx status.
pub const VENDOR_REFUSED: &str = "VENDOR_REFUSED";

/// What the vendor said to the verify request made with the new credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The vendor answered with this HTTP status; only 2xx commits.
    Answered(u16),
    /// The request got no answer.
    Failed {
        /// The stable reason, as journaled.
        reason: &'static str,
        /// What happened, for people.
        detail: String,
    },
}

/// Makes the verify request with a staged credential: one attempt, so the
/// answer comes from this credential now.
pub trait Verifier: Sync {
    /// Sends the verify request authenticated with `secret`.
    fn verify(&self, secret: &Secret) -> impl Future<Output = Verdict> + Send;
}

/// A step of a rotation, as journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The new credential is sealed beside the current one.
    Staged,
    /// It passed the check and is now current.
    Committed,
    /// It failed the check and was discarded.
    Aborted,
}

impl Step {
    /// Lower-case name, as in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Staged => "staged",
            Step::Committed => "committed",
            Step::Aborted => "aborted",
        }
    }
}

/// One journaled step.
#[derive(Debug, Clone, Copy)]
pub struct StepRecord<'a> {
    /// Which credential.
    pub key: &'a CredentialKey,
    /// The step reached.
    pub step: Step,
    /// The current credential's fingerprint.
    pub old: &'a Fingerprint,
    /// The new credential's fingerprint.
    pub new: &'a Fingerprint,
    /// The vendor's answer to the verify request, once there is one.
    pub vendor_status: Option<u16>,
    /// Why the rotation was aborted.
    pub error: Option<&'a str>,
}

/// Where rotation steps are recorded (the audit log). A step that cannot be
/// recorded stops the rotation.
pub trait Journal: Sync {
    /// Why a step could not be recorded.
    type Error;
    /// Records `step`.
    fn record(&self, step: StepRecord<'_>) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// A committed rotation.
#[derive(Debug, Clone)]
pub struct Rotated {
    /// The new current credential.
    pub current: CredentialMeta,
    /// The credential it replaced.
    pub previous: Fingerprint,
    /// The vendor's (2xx) answer to the verify request.
    pub verify_status: u16,
}

/// Why a rotation did not commit.
#[derive(Debug, thiserror::Error)]
pub enum RotationError<J> {
    /// Another rotation of the key is running on this replica.
    #[error("a rotation of tenant '{}' vendor '{}' is already running", .0.tenant, .0.vendor)]
    InProgress(CredentialKey),
    /// The vault refused or failed a step.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// A step could not be journaled.
    #[error("a rotation step could not be journaled")]
    Journal(J),
    /// The new credential failed the check; the current one stays in use.
    #[error("{}; the current credential stays in use", refusal(.0))]
    Refused(Verdict),
}

fn refusal(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Answered(status) => {
            format!("the vendor answered {status} to the verify request with the new credential")
        }
        Verdict::Failed { detail, .. } => format!("the verify request failed ({detail})"),
    }
}

/// The rotations running on this replica: one per credential at a time (a
/// second is refused, not queued). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Rotations {
    running: Arc<Mutex<HashSet<CredentialKey>>>,
}

/// Marks a key as being rotated until dropped.
struct Running<'a> {
    key: &'a CredentialKey,
    running: &'a Mutex<HashSet<CredentialKey>>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.running.lock().expect("lock").remove(self.key);
    }
}

impl Rotations {
    /// Rotates `key` to `secret`: stage, journal, verify, then promote or
    /// discard and journal again.
    pub async fn rotate<J: Journal>(
        &self,
        vault: &Vault,
        key: &CredentialKey,
        secret: Secret,
        verifier: &impl Verifier,
        journal: &J,
    ) -> Result<Rotated, RotationError<J::Error>> {
        let _running = self.start(key)?;
        let (pending, old) = vault.stage(key, &secret).await?;
        let record = |step, vendor_status, error| StepRecord {
            key,
            step,
            old: &old,
            new: &pending.fingerprint,
            vendor_status,
            error,
        };
        let journaled = |r| async move { journal.record(r).await.map_err(RotationError::Journal) };
        journaled(record(Step::Staged, None, None)).await?;
        let verdict = verifier.verify(&secret).await;
        drop(secret);
        match verdict {
            Verdict::Answered(status) if (200..300).contains(&status) => {
                let current = vault.promote(key, &pending.fingerprint).await?;
                journaled(record(Step::Committed, Some(status), None)).await?;
                Ok(Rotated {
                    current: current.meta(),
                    previous: old.clone(),
                    verify_status: status,
                })
            }
            refused => {
                vault.discard(key).await?;
                let (status, reason) = match &refused {
                    Verdict::Answered(status) => (Some(*status), VENDOR_REFUSED),
                    Verdict::Failed { reason, .. } => (None, *reason),
                };
                journaled(record(Step::Aborted, status, Some(reason))).await?;
                Err(RotationError::Refused(refused))
            }
        }
    }

    fn start<'a, J>(&'a self, key: &'a CredentialKey) -> Result<Running<'a>, RotationError<J>> {
        if !self.running.lock().expect("lock").insert(key.clone()) {
            return Err(RotationError::InProgress(key.clone()));
        }
        Ok(Running {
            key,
            running: &self.running,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LocalStore, MasterKey};

    struct Answers(Verdict);

    impl Verifier for Answers {
        async fn verify(&self, _: &Secret) -> Verdict {
            self.0.clone()
        }
    }

    #[derive(Default)]
    struct Steps(Mutex<Vec<String>>);

    impl Journal for Steps {
        type Error = ();
        async fn record(&self, r: StepRecord<'_>) -> Result<(), ()> {
            let line = format!("{} {:?} {:?}", r.step.as_str(), r.vendor_status, r.error);
            self.0.lock().unwrap().push(line);
            Ok(())
        }
    }

    async fn vault(dir: &std::path::Path) -> (Vault, CredentialKey) {
        let store = LocalStore::open(dir).unwrap();
        let vault = Vault::new(Arc::new(MasterKey::from_bytes([7; 32])), Arc::new(store));
        let key = CredentialKey::new("acme", "stripe");
        vault
            .put(&key, &Secret::from("old-secret-0001".to_owned()))
            .await
            .unwrap();
        (vault, key)
    }

    fn new_secret() -> Secret {
        Secret::from("new-secret-0002".to_owned())
    }

    #[tokio::test]
    async fn a_2xx_commits_and_anything_else_discards() {
        let dir = tempfile::tempdir().unwrap();
        let (vault, key) = vault(dir.path()).await;
        let (rotations, steps) = (Rotations::default(), Steps::default());
        let refused = rotations
            .rotate(
                &vault,
                &key,
                new_secret(),
                &Answers(Verdict::Answered(401)),
                &steps,
            )
            .await;
        assert!(matches!(
            refused,
            Err(RotationError::Refused(Verdict::Answered(401)))
        ));
        assert_eq!(vault.list(None).await.unwrap()[0].1.last4, "0001");
        let done = rotations
            .rotate(
                &vault,
                &key,
                new_secret(),
                &Answers(Verdict::Answered(200)),
                &steps,
            )
            .await
            .unwrap();
        assert_eq!((done.current.last4.as_str(), done.verify_status), ("0002", 200));
        assert_eq!(
            *steps.0.lock().unwrap(),
            [
                "staged None None",
                "aborted Some(401) Some(\"VENDOR_REFUSED\")",
                "staged None None",
                "committed Some(200) None",
            ]
        );
    }

    #[tokio::test]
    async fn one_rotation_per_key_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (vault, key) = vault(dir.path()).await;
        let rotations = Rotations::default();
        let held = rotations.start::<()>(&key).unwrap();
        let second = rotations
            .rotate(
                &vault,
                &key,
                new_secret(),
                &Answers(Verdict::Answered(200)),
                &Steps::default(),
            )
            .await;
        assert!(matches!(second, Err(RotationError::InProgress(_))));
        drop(held);
        assert!(rotations.start::<()>(&key).is_ok(), "the key is free again");
    }
}
