//! `POST /auth/login` and user administration (`POST /users`, `GET /users`,
//! `POST /users/{username}/unlock`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::users::LoginOutcome;
use crate::auth::{Admins, AuthState, Authed, Role};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};
use crate::ratelimit::ClientIp;

/// Login body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Username.
    #[schema(min_length = 1, max_length = 64)]
    pub username: String,
    /// Password.
    pub password: String,
}

/// Login answer.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenResponse {
    /// The JWT to send as `Authorization: Bearer <token>`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
    /// The user's role.
    pub role: Role,
}

/// `POST /auth/login`: a token for a correct username and password. Every failure (unknown
/// user, wrong password, locked account) is the same 401.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = crate::error::ErrorBody),
        (status = 429, body = crate::error::ErrorBody)))]
pub async fn login(
    State(state): State<AuthState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<LoginRequest>,
) -> ApiResult<Json<TokenResponse>> {
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
    let refused = |reason: &str| json!({"username": body.username, "reason": reason, "ip": ip});
    match outcome {
        LoginOutcome::Success(user) => {
            let access_token = state
                .tokens()
                .issue(&user.username, user.role, state.clock())?;
            state
                .security()
                .record(
                    "auth.login_succeeded",
                    json!({"username": user.username, "ip": ip}),
                )
                .await;
            Ok(Json(TokenResponse {
                access_token,
                token_type: "Bearer".to_owned(),
                expires_in: state.tokens().expires_in(),
                role: user.role,
            }))
        }
        LoginOutcome::UnknownUser => {
            state
                .security()
                .record("auth.login_failed", refused("unknown_user"))
                .await;
            Err(invalid_credentials())
        }
        LoginOutcome::WrongPassword { locked_now } => {
            state
                .security()
                .record("auth.login_failed", refused("wrong_password"))
                .await;
            if locked_now {
                state
                    .security()
                    .record("auth.account_locked", refused("too_many_failures"))
                    .await;
            }
            Err(invalid_credentials())
        }
        LoginOutcome::Locked => {
            state
                .security()
                .record("auth.login_failed", refused("account_locked"))
                .await;
            Err(invalid_credentials())
        }
    }
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
    Ok((
        StatusCode::CREATED,
        Json(UserView {
            username: user.username,
            role: user.role,
            created_at: user.created_at,
            locked_until: None,
        }),
    ))
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
        out.push(UserView {
            locked_until: login.locked_until.filter(|&until| until > now),
            username: user.username,
            role: user.role,
            created_at: user.created_at,
        });
    }
    Ok(Json(out))
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
