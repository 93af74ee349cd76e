//! `POST /auth/login` (a token, and for a browser a session cookie), `POST /auth/logout`,
//! `GET /auth/me`, and user administration (`POST /users`, `GET /users`, `PATCH /users/{username}`, `DELETE /users/{username}`, `POST /users/{username}/unlock`).
//! A change to a user (role, password, disabled) or its deletion revokes its tokens.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::users::{LoginOutcome, User, UserChange};
use crate::auth::{Admins, AnyRole, AuthState, Authed, Refusal, Role, session};
use crate::client_ip::ClientIp;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};

/// Login body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Username.
    #[schema(min_length = 1, max_length = 64)]
    pub username: String,
    /// Password.
    pub password: String,
    /// Also sign the browser in: the answer sets the `orch_session` cookie (`HttpOnly`,
    /// `SameSite=Strict`, the token) and the `orch_csrf` cookie (for the page's scripts to
    /// send back as `X-CSRF-Token` on calls that change something). Default `false`.
    #[serde(default)]
    pub cookie: bool,
}

/// Login answer.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenResponse {
    /// The JWT to send as `Authorization: Bearer <token>`; absent with `"cookie": true` (the
    /// session cookie holds it, out of scripts' reach).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
    /// The user's role.
    pub role: Role,
    /// With `"cookie": true`: the CSRF token to send as `X-CSRF-Token` (also in the
    /// `orch_csrf` cookie).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
}

/// `POST /auth/login`: a token for a correct username and password (with `"cookie": true`,
/// also a browser session in cookies). Every failure (unknown user, wrong password, locked
/// account) is the same 401.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = crate::error::ErrorBody),
        (status = 429, body = crate::error::ErrorBody)))]
pub async fn login(
    State(state): State<AuthState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<LoginRequest>,
) -> ApiResult<Response> {
    if let Some(ip) = ip {
        state.limits().check_login(ip)?;
    }
    let ip = ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    if body.username.len() > 256 {
        return Err(ApiError::unprocessable("username", "too long"));
    }
    if body.password.len() > 1024 {
        return Err(ApiError::unprocessable("password", "too long"));
    }
    let now = state.clock().unix_now();
    let outcome = state
        .users()
        .login(&body.username, &body.password, state.lockout(), now)
        .await?;
    let refused = |reason: &str| Refusal::new(reason, Some(ip.clone())).username(&body.username);
    let security = state.security();
    match outcome {
        LoginOutcome::Success(user) => {
            let access_token = state.tokens().issue(&user, state.clock())?;
            security
                .record(
                    "auth.login_succeeded",
                    json!({"username": user.username, "ip": ip}),
                )
                .await;
            let expires_in = state.tokens().expires_in();
            let mut headers = HeaderMap::new();
            let mut csrf_token = None;
            if body.cookie {
                for cookie in session::open(&access_token, expires_in, state.secure_cookies())? {
                    headers.append(header::SET_COOKIE, cookie);
                }
                csrf_token = Some(session::csrf_token(&access_token));
            }
            let answer = Json(TokenResponse {
                access_token: (!body.cookie).then_some(access_token),
                token_type: "Bearer".to_owned(),
                expires_in,
                role: user.role,
                csrf_token,
            });
            Ok((headers, answer).into_response())
        }
        LoginOutcome::WrongPassword { locked_now: true } => {
            // Rare (once per lockout) and worth seeing at once; written in the background, so
            // the attempt that locks takes no longer than the others (which would tell that the
            // user exists).
            let data = json!({"username": body.username, "reason": "too_many_failures", "ip": ip});
            let log = security.clone();
            tokio::spawn(async move { log.record("auth.account_locked", data).await });
            security
                .refused("auth.login_failed", refused("wrong_password"))
                .await;
            Err(invalid_credentials())
        }
        other => {
            let reason = match other {
                LoginOutcome::UnknownUser => "unknown_user",
                LoginOutcome::Locked => "account_locked",
                LoginOutcome::Disabled => "account_disabled",
                _ => "wrong_password",
            };
            security.refused("auth.login_failed", refused(reason)).await;
            Err(invalid_credentials())
        }
    }
}

/// `POST /auth/logout`: ends the browser session: its cookies are cleared, signed in or not
/// (an expired session's too). The token itself stays valid until it expires (the session
/// cookie is the only copy a browser session has); a user's tokens are all revoked by
/// changing the user (`PATCH /users/{username}`).
#[utoipa::path(post, path = "/auth/logout", tag = "auth", responses((status = 204)))]
pub async fn logout(State(state): State<AuthState>) -> ApiResult<Response> {
    let mut headers = HeaderMap::new();
    for cookie in session::close(state.secure_cookies())? {
        headers.append(header::SET_COOKIE, cookie);
    }
    Ok((StatusCode::NO_CONTENT, headers).into_response())
}

/// Who a token or session signs in as.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Me {
    /// Username.
    pub username: String,
    /// Role: what the caller may do.
    pub role: Role,
}

/// `GET /auth/me`: the caller's username and role (a page asks it to know what to offer).
#[utoipa::path(get, path = "/auth/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = Me), (status = 401, body = crate::error::ErrorBody)))]
pub async fn me(caller: Authed<AnyRole>) -> Json<Me> {
    let principal = caller.principal();
    Json(Me {
        username: principal.username.clone(),
        role: principal.role,
    })
}

fn invalid_credentials() -> ApiError {
    ApiError::unauthorized("invalid username or password")
}

/// A new user.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// 1 to 64 of `A-Z a-z 0-9 . _ @ -`.
    #[schema(pattern = r"^[A-Za-z0-9._@-]{1,64}$")]
    pub username: String,
    /// 12 to 1024 bytes.
    #[schema(min_length = 12, max_length = 1024)]
    pub password: String,
    /// The role.
    pub role: Role,
}

/// A user as shown (no hash).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserView {
    /// Username.
    pub username: String,
    /// Role.
    pub role: Role,
    /// Unix seconds.
    pub created_at: u64,
    /// Locked until (Unix seconds), if locked now.
    pub locked_until: Option<u64>,
    /// Disabled users cannot log in; their tokens are refused.
    #[serde(default)]
    pub disabled: bool,
}

impl UserView {
    fn of(user: User, locked_until: Option<u64>) -> Self {
        UserView {
            username: user.username,
            role: user.role,
            created_at: user.created_at,
            locked_until,
            disabled: user.disabled,
        }
    }
}

/// A change to a user: each field given is changed, the others stay.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// A new role.
    pub role: Option<Role>,
    /// Disable (`true`) or enable (`false`) the user.
    pub disabled: Option<bool>,
    /// A new password (12 to 1024 bytes); also clears failed logins and lockout.
    pub password: Option<String>,
}

/// `POST /users` (admin): creates a user.
#[utoipa::path(post, path = "/users", tag = "users", request_body = CreateUser,
    security(("bearer" = [])),
    responses((status = 201, body = UserView), (status = 409, body = crate::error::ErrorBody)))]
pub async fn create_user(
    State(state): State<AuthState>,
    admin: Authed<Admins>,
    ApiJson(body): ApiJson<CreateUser>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    let user = state
        .users()
        .create(
            &body.username,
            &body.password,
            body.role,
            state.clock().unix_now(),
        )
        .await?;
    state
        .security()
        .record(
            "auth.user_created",
            json!({"username": user.username, "role": user.role, "by": admin.principal().username}),
        )
        .await;
    Ok((StatusCode::CREATED, Json(UserView::of(user, None))))
}

/// `GET /users` (admin).
#[utoipa::path(get, path = "/users", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = Vec<UserView>)))]
pub async fn list_users(
    State(state): State<AuthState>,
    _admin: Authed<Admins>,
) -> ApiResult<Json<Vec<UserView>>> {
    let now = state.clock().unix_now();
    let mut out = Vec::new();
    for user in state.users().list().await? {
        let login = state.users().login_state(&user.username).await?;
        let locked_until = login.locked_until.filter(|&until| until > now);
        out.push(UserView::of(user, locked_until));
    }
    Ok(Json(out))
}

/// 404 for a name no user can have (checked before it reaches the store, whose own checks
/// would name another field).
fn a_possible_name(username: &str) -> ApiResult<()> {
    crate::auth::users::check_username(username)
        .map_err(|_| ApiError::not_found("no user has this name").with_field("username"))
}

/// `POST /users/{username}/unlock` (admin): clears failed logins and lockout.
#[utoipa::path(post, path = "/users/{username}/unlock", tag = "users",
    security(("bearer" = [])),
    params(("username" = String, Path, pattern = r"^[A-Za-z0-9._@-]{1,64}$")),
    responses((status = 200), (status = 404, body = crate::error::ErrorBody)))]
pub async fn unlock_user(
    State(state): State<AuthState>,
    admin: Authed<Admins>,
    ApiPath(username): ApiPath<String>,
) -> ApiResult<Json<serde_json::Value>> {
    a_possible_name(&username)?;
    state.users().unlock(&username).await?;
    state
        .security()
        .record(
            "auth.account_unlocked",
            json!({"username": username, "by": admin.principal().username}),
        )
        .await;
    Ok(Json(json!({"username": username, "unlocked": true})))
}

/// `PATCH /users/{username}` (admin): changes a user's role, password or disabled flag. Any
/// change revokes the user's tokens (at once on this node, within `security.user_recheck` on
/// the others).
#[utoipa::path(patch, path = "/users/{username}", tag = "users", request_body = UpdateUser,
    security(("bearer" = [])), params(("username" = String, Path)),
    responses((status = 200, body = UserView), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody)))]
pub async fn update_user(
    State(state): State<AuthState>,
    admin: Authed<Admins>,
    ApiPath(username): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateUser>,
) -> ApiResult<Json<UserView>> {
    a_possible_name(&username)?;
    let change = UserChange {
        role: body.role,
        disabled: body.disabled,
        password: body.password,
    };
    if change == UserChange::default() {
        return Err(ApiError::unprocessable(
            "body",
            "give at least one of role, disabled, password",
        ));
    }
    // Refused when it would leave no enabled admin: the API could not be administered any
    // more (`orchd user` on the host still can).
    let user = state
        .users()
        .update_keeping_an_admin(&username, change.clone())
        .await?;
    state
        .security()
        .record(
            "auth.user_changed",
            json!({
                "username": username,
                "role": change.role,
                "disabled": change.disabled,
                "password_changed": change.password.is_some(),
                "by": admin.principal().username,
            }),
        )
        .await;
    let login = state.users().login_state(&username).await?;
    let now = state.clock().unix_now();
    let locked_until = login.locked_until.filter(|&until| until > now);
    Ok(Json(UserView::of(user, locked_until)))
}

/// `DELETE /users/{username}` (admin): deletes a user; its tokens stop working.
#[utoipa::path(delete, path = "/users/{username}", tag = "users",
    security(("bearer" = [])), params(("username" = String, Path)),
    responses((status = 200), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody)))]
pub async fn delete_user(
    State(state): State<AuthState>,
    admin: Authed<Admins>,
    ApiPath(username): ApiPath<String>,
) -> ApiResult<Json<serde_json::Value>> {
    a_possible_name(&username)?;
    state.users().delete_keeping_an_admin(&username).await?;
    state
        .security()
        .record(
            "auth.user_deleted",
            json!({"username": username, "by": admin.principal().username}),
        )
        .await;
    Ok(Json(json!({"username": username, "deleted": true})))
}
