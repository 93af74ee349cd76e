//! [`UserStore::login`]: a password check with lockout that holds across processes and
//! concurrent guesses, and whose timing does not tell existing users from unknown ones.
//!
//! "Locked" is decided under the user's guard, and the password is verified under it too:
//! concurrent guesses for one user take turns, each sees the failures of the ones before it,
//! and no more than `max_failures` are verified before the lockout; a success (which clears
//! the failure count) can only happen while the account is not locked, so it never clears a
//! lockout. A login that finds the account already locked (or disabled) takes no guard and
//! writes nothing.
//!
//! Timing: every login of a valid username takes the same in-process turn and does the same
//! two reads (the user, its login state) and one password verification (of a dummy hash when
//! there is no user, or it is locked or disabled). Only a login that can change the login
//! state also takes the guard and writes; the others wait as long as such a login spent on
//! that, drawn from the most recent ones ([`LoginTiming`]). Unknown users write nothing (but
//! for one lock taken and released to measure a guard, once per process, when no login has
//! taken one yet).

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::{LoginOutcome, LoginState, UserError, UserStore, check_username};
use crate::config::LockoutConfig;

/// Guarded spans remembered to pad the logins that take no guard.
const SAMPLES: usize = 64;

/// How long recent logins spent under their guard, besides verifying the password.
#[derive(Debug, Default)]
pub(crate) struct LoginTiming {
    samples: Mutex<(VecDeque<Duration>, usize)>,
}

impl LoginTiming {
    fn record(&self, spent: Duration) {
        let mut samples = self.samples.lock();
        if samples.0.len() == SAMPLES {
            samples.0.pop_front();
        }
        samples.0.push_back(spent);
    }

    /// One recent span, in turn; `None` before the first.
    fn next(&self) -> Option<Duration> {
        let mut samples = self.samples.lock();
        let (spans, turn) = &mut *samples;
        if spans.is_empty() {
            return None;
        }
        *turn = (*turn + 1) % spans.len();
        Some(spans[*turn])
    }
}

impl UserStore {
    async fn verify(&self, password: &str, hash: Option<&str>) -> Result<bool, UserError> {
        let candidate = password.to_owned();
        let hash = hash.unwrap_or(self.dummy_hash.as_str()).to_owned();
        self.run_hashing(move || super::verify_blocking(&candidate, &hash))
            .await
    }

    /// Waits as long as a guarded login spent on its guard and writes. Before any login has
    /// taken a guard, measures one guard taken and released (once per process).
    async fn pad(&self) -> Result<(), UserError> {
        let span = match self.timing.next() {
            Some(span) => span,
            None => {
                let span = self.guards.time_one().await?;
                let read = Instant::now();
                let _ = self.login_state("~").await?;
                self.timing.record(span + read.elapsed());
                return Ok(());
            }
        };
        tokio::time::sleep(span).await;
        Ok(())
    }

    /// Checks a password, recording failures and locking the account after too many
    /// (`lockout`), across every process on the database. Every failure is the same to the
    /// caller's client (a 401) and takes the same time.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        lockout: &LockoutConfig,
        now_unix: u64,
    ) -> Result<LoginOutcome, UserError> {
        if check_username(username).is_err() {
            // No such name can exist: nothing to read, nothing to tell.
            self.verify(password, None).await?;
            self.pad().await?;
            return Ok(LoginOutcome::UnknownUser);
        }
        let turn = self.guards.stripe(username).await?;
        let user = self.get(username).await?;
        let state = self.login_state(username).await?;
        let settled = match &user {
            None => Some(LoginOutcome::UnknownUser),
            Some(user) if user.disabled => Some(LoginOutcome::Disabled),
            // Locked ends only by time or an unlock: deciding it without the guard is safe.
            Some(_) if state.is_locked(now_unix) => Some(LoginOutcome::Locked),
            Some(_) => None,
        };
        if let Some(outcome) = settled {
            self.verify(password, None).await?;
            self.pad().await?;
            return Ok(outcome);
        }
        // May change the login state: decide under the guard.
        let started = Instant::now();
        let mut guard = self.guards.user_in_turn(turn, username).await?;
        let user = self.get(username).await?;
        let mut state = self.login_state(username).await?;
        let usable = user
            .as_ref()
            .filter(|user| !user.disabled && !state.is_locked(now_unix));
        let verifying = Instant::now();
        let verified = self
            .verify(password, usable.map(|user| user.password_hash.as_str()))
            .await?;
        let verify_took = verifying.elapsed();
        let outcome = match user {
            None => LoginOutcome::UnknownUser,
            Some(user) if user.disabled => LoginOutcome::Disabled,
            Some(_) if state.is_locked(now_unix) => LoginOutcome::Locked,
            Some(user) if verified => {
                // Not locked (decided above, under the guard): clearing failures clears no
                // lockout.
                if state != LoginState::default() {
                    guard.still_held().await?;
                    self.put_login_state(username, &LoginState::default())
                        .await?;
                }
                LoginOutcome::Success(user)
            }
            Some(_) => {
                let window_start = now_unix.saturating_sub(lockout.window.as_secs());
                state.failures.retain(|&at| at > window_start);
                state.failures.push(now_unix);
                let locked_now = state.failures.len() >= lockout.max_failures as usize;
                if locked_now {
                    state.locked_until =
                        Some(now_unix.saturating_add(lockout.duration.as_secs().max(1)));
                    state.failures.clear();
                } else {
                    state.locked_until = None;
                }
                guard.still_held().await?;
                self.put_login_state(username, &state).await?;
                LoginOutcome::WrongPassword { locked_now }
            }
        };
        guard.release().await;
        if !matches!(outcome, LoginOutcome::Success(_)) {
            self.timing
                .record(started.elapsed().saturating_sub(verify_took));
        }
        Ok(outcome)
    }
}
