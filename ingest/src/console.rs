//! The operator console: the Credits page behind a login, so that no customer data is served
//! without the API key; a browser cannot send a bearer header, so the key is exchanged once
//! for a server-side session carried by an `HttpOnly`, `SameSite=Strict` cookie.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::Value;

use crate::engine::now;
use crate::http::{Api, CreditTypeQuery, bearer, escape, resolve_credit_type, same_key};
use crate::rows;
use crate::views;

/// Name of the session cookie.
pub const COOKIE: &str = "refill_session";
/// How long a session lasts from its login (also the cookie's `Max-Age`): a working day.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 60 * 60);
/// Most sessions held at once, so that logins cannot grow the process's memory without bound.
pub const SESSIONS_MAX: usize = 10_000;
/// Largest login body read; a form with one key field is far smaller.
const LOGIN_BODY_MAX: usize = 8 * 1024;
/// Longest `key` field accepted; longer is not an API key and is refused before comparing.
const KEY_MAX: usize = 1024;
/// Random bytes in a session token (256 bits: not guessable), sent as hex.
const TOKEN_BYTES: usize = 32;

/// The console's sessions, kept server-side (token → expiry) so a logout or a restart ends
/// them and the cookie carries nothing but an unguessable name.
pub struct Sessions {
    tokens: Mutex<HashMap<String, Instant>>,
    ttl: Duration,
    max: usize,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::with_limits(SESSION_TTL, SESSIONS_MAX)
    }
}

impl Sessions {
    /// Sessions lasting `ttl`, at most `max` of them at once.
    pub fn with_limits(ttl: Duration, max: usize) -> Self {
        Self {
            tokens: Mutex::new(HashMap::new()),
            ttl,
            max: max.max(1),
        }
    }

    /// How long a session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Opens a session and returns its token; `Err` when the OS gives no randomness.
    pub fn create(&self) -> Result<String, getrandom::Error> {
        let mut bytes = [0_u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes)?;
        let token = hex(&bytes);
        let now = Instant::now();
        // An expiry past what Instant can hold is no session at all rather than a panic.
        let expires_at = now.checked_add(self.ttl).unwrap_or(now);
        let mut tokens = self.lock();
        // Logins are rare: pruning the whole map on each one is cheap and keeps it tidy.
        tokens.retain(|_, expiry| *expiry > now);
        if tokens.len() >= self.max {
            // Full of live sessions: the one closest to its end makes room for the new one.
            let soonest = tokens
                .iter()
                .min_by_key(|(_, expiry)| **expiry)
                .map(|(token, _)| token.clone());
            if let Some(soonest) = soonest {
                tokens.remove(&soonest);
            }
        }
        tokens.insert(token.clone(), expires_at);
        Ok(token)
    }

    /// Whether `token` names a live session (an expired one is dropped on the way).
    pub fn is_valid(&self, token: &str) -> bool {
        // Tokens are 64 hex digits; anything else is refused without touching the map.
        if token.len() != 2 * TOKEN_BYTES || !token.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return false;
        }
        let mut tokens = self.lock();
        match tokens.get(token) {
            Some(expiry) if *expiry > Instant::now() => true,
            Some(_) => {
                tokens.remove(token);
                false
            }
            None => false,
        }
    }

    /// Ends the session `token`, if it exists.
    pub fn remove(&self, token: &str) {
        self.lock().remove(token);
    }

    /// Sessions held now (live or not yet pruned).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // A panic elsewhere while holding the lock leaves a map that is still consistent.
        self.tokens
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(2 * bytes.len());
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// The console's routes (HTML), and the old path of the Credits page redirecting to it.
pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route(
            "/console",
            get(|| async { redirect(StatusCode::PERMANENT_REDIRECT, "/console/") }),
        )
        .route("/console/", get(home))
        .route(
            "/console/login",
            get(|| async { redirect(StatusCode::SEE_OTHER, "/console/") }).post(login),
        )
        .route("/console/logout", post(logout))
        .route("/console/customers", get(open_customer))
        .route("/console/customers/{id}", get(credits_page))
        .route("/customers/{id}", get(old_credits_path))
        .layer(middleware::map_response(page_headers))
}

/// Pages with customer data must not stay in caches, nor be framed by another site
/// (clickjacking); the policy also forbids scripts, which the console has none of.
async fn page_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn redirect(status: StatusCode, location: &str) -> Response {
    let mut response = status.into_response();
    // Locations are built from a request's URI or percent-encoded text: always valid.
    let value = HeaderValue::from_str(location).unwrap_or(HeaderValue::from_static("/console/"));
    response.headers_mut().insert(header::LOCATION, value);
    response
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>{title}</title><style>body{{font:14px system-ui;margin:2em}}</style></head><body><h1>{title}</h1>{body}</body></html>"
    );
    (status, Html(html)).into_response()
}

fn login_page(status: StatusCode, message: Option<&str>) -> Response {
    let message = message.map_or_else(String::new, |text| {
        format!("<p id=error role=alert>{}</p>", escape(text))
    });
    page(
        status,
        "Refill console",
        &format!(
            "{message}<form method=post action=/console/login><label>API key <input type=password name=key autocomplete=current-password required></label> <button>Log in</button></form>"
        ),
    )
}

/// Who is asking: a live session or the right bearer key; a wrong key is told apart from
/// no credentials so that scripts get a 401 rather than a redirect to a form.
enum Caller {
    Allowed,
    WrongKey,
    Anonymous,
}

fn caller(api: &Api, headers: &HeaderMap) -> Caller {
    if let Some(key) = bearer(headers) {
        return if same_key(key.as_bytes(), api.api_key.as_bytes()) {
            Caller::Allowed
        } else {
            Caller::WrongKey
        };
    }
    if session_tokens(headers).any(|token| api.sessions.is_valid(token)) {
        Caller::Allowed
    } else {
        Caller::Anonymous
    }
}

/// The values of every `refill_session` cookie sent (a browser may send several).
fn session_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// `Secure` only when the browser reached us over TLS (directly, or through a proxy that
/// says so): on plain HTTP a browser would drop a `Secure` cookie and the login would fail.
fn over_tls(headers: &HeaderMap, uri: &Uri) -> bool {
    uri.scheme_str() == Some("https")
        || headers
            .get("x-forwarded-proto")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(',').next())
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// `GET /console/`: the login form, or with a session the form to open a customer.
async fn home(State(api): State<Api>, headers: HeaderMap) -> Response {
    match caller(&api, &headers) {
        Caller::Allowed => page(
            StatusCode::OK,
            "Refill console",
            "<form method=get action=/console/customers><label>Customer id <input name=id required></label> <button>Open</button></form><form method=post action=/console/logout><button>Log out</button></form>",
        ),
        Caller::WrongKey => login_page(StatusCode::UNAUTHORIZED, Some("wrong API key")),
        Caller::Anonymous => login_page(StatusCode::OK, None),
    }
}

/// `POST /console/login` with `key=<API key>`: a session cookie and back to the console.
async fn login(State(api): State<Api>, request: Request) -> Response {
    let tls = over_tls(request.headers(), request.uri());
    let Ok(body) = axum::body::to_bytes(request.into_body(), LOGIN_BODY_MAX).await else {
        return login_page(
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("expected a login form of at most 8 KiB"),
        );
    };
    let Ok(fields) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) else {
        return login_page(
            StatusCode::BAD_REQUEST,
            Some("expected a form (key=<API key>)"),
        );
    };
    let mut keys = fields.iter().filter(|(name, _)| name == "key");
    // Exactly one key: with two, which one was meant is a guess an auth check must not make.
    let key = match (keys.next(), keys.next()) {
        (Some((_, key)), None) if !key.is_empty() && key.len() <= KEY_MAX => key,
        _ => {
            return login_page(
                StatusCode::BAD_REQUEST,
                Some("expected one form field key=<API key> of at most 1024 bytes"),
            );
        }
    };
    if let Some(wait) = api.login_throttle.wait() {
        // Refused before the key is compared: a guess while closed learns nothing.
        let seconds = wait.as_secs().max(1);
        let mut response = login_page(
            StatusCode::TOO_MANY_REQUESTS,
            Some("too many wrong API keys in the last minute: try again shortly"),
        );
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    if !same_key(key.as_bytes(), api.api_key.as_bytes()) {
        api.login_throttle.failed();
        metrics::counter!("refill_console_login_failures_total").increment(1);
        return login_page(StatusCode::UNAUTHORIZED, Some("wrong API key"));
    }
    let Ok(token) = api.sessions.create() else {
        return page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Refill console",
            "<p>cannot open a session: the operating system gave no random bytes</p>",
        );
    };
    let cookie = format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        api.sessions.ttl().as_secs(),
        if tls { "; Secure" } else { "" }
    );
    let mut response = redirect(StatusCode::SEE_OTHER, "/console/");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `POST /console/logout`: ends the session and clears the cookie.
async fn logout(State(api): State<Api>, headers: HeaderMap) -> Response {
    for token in session_tokens(&headers) {
        api.sessions.remove(token);
    }
    let mut response = redirect(StatusCode::SEE_OTHER, "/console/");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("refill_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    response
}

#[derive(Deserialize)]
struct OpenQuery {
    id: Option<String>,
}

/// `GET /console/customers?id=`: a plain HTML form cannot put the id in the path, so this
/// sends the browser to the customer's page (which checks the session itself).
async fn open_customer(Query(query): Query<OpenQuery>) -> Response {
    match query.id.as_deref().map(str::trim) {
        Some(id) if !id.is_empty() => redirect(
            StatusCode::SEE_OTHER,
            &format!("/console/customers/{}", path_segment(id)),
        ),
        _ => redirect(StatusCode::SEE_OTHER, "/console/"),
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn path_segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

/// `GET /customers/{id}`, where the Credits page used to be open to anyone: now only a
/// permanent redirect to its place in the console, the query kept, nothing read.
async fn old_credits_path(uri: Uri) -> Response {
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path(), |path_and_query| path_and_query.as_str());
    redirect(StatusCode::PERMANENT_REDIRECT, &format!("/console{path}"))
}

fn no_credits(customer: &str) -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Credits",
        &format!(
            "<p>No credits for {}.</p><p><a href=/console/>Console</a></p>",
            escape(customer)
        ),
    )
}

fn unavailable(message: &str) -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Credits",
        &format!(
            "<p>{}; reload the page.</p><p><a href=/console/>Console</a></p>",
            escape(message)
        ),
    )
}

/// `GET /console/customers/{id}?credit_type=`: the Credits page (balance, auto-recharge,
/// grants, recharges, ledger), for a live session or the bearer key only.
async fn credits_page(
    State(api): State<Api>,
    Path(path_id): Path<String>,
    Query(query): Query<CreditTypeQuery>,
    headers: HeaderMap,
) -> Response {
    match caller(&api, &headers) {
        Caller::Allowed => {}
        Caller::WrongKey => return login_page(StatusCode::UNAUTHORIZED, Some("wrong API key")),
        Caller::Anonymous => return redirect(StatusCode::SEE_OTHER, "/console/"),
    }
    let shard = api.engine.shard_of(&path_id);
    let Ok(credit_type) = resolve_credit_type(&api, shard, &path_id, query.credit_type).await
    else {
        return no_credits(&path_id);
    };
    let at = now();
    let (customer, kind) = (path_id.clone(), credit_type.clone());
    let view = api
        .engine
        .read(shard, move |state| {
            state
                .find_account(&customer, &kind)
                .map(|handle| views::credits(state, handle, at))
        })
        .await;
    let view = match view {
        Ok(Some(view)) => view,
        Ok(None) => return no_credits(&path_id),
        Err(error) => return unavailable(&format!("cannot read the credits: {error}")),
    };
    let ledger_rows = match crate::reads::ledger(&api.engine, &path_id, &credit_type, 0, 200).await
    {
        Ok(found) => found,
        Err(error) => return unavailable(&format!("cannot read the ledger: {error}")),
    };
    let attempt_rows = match crate::reads::attempts(&api.engine, &path_id, &credit_type, 200).await
    {
        Ok(found) => found,
        Err(error) => return unavailable(&format!("cannot read the recharges: {error}")),
    };
    let ledger: Vec<Value> = ledger_rows.iter().map(rows::entry_json).collect();
    let attempts: Vec<Value> = attempt_rows.iter().map(rows::attempt_json).collect();
    Html(crate::page::render(&path_id, &view, &ledger, &attempts)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_valid_until_removed() {
        let sessions = Sessions::default();
        let token = sessions.create().expect("randomness");
        assert_eq!(token.len(), 64);
        assert!(sessions.is_valid(&token));
        let last = if token.ends_with('0') { '1' } else { '0' };
        let other = format!("{}{last}", &token[..63]);
        assert!(
            !sessions.is_valid(&other),
            "another token of the same shape"
        );
        assert!(!sessions.is_valid("not-a-token"));
        sessions.remove(&token);
        assert!(!sessions.is_valid(&token));
    }

    #[test]
    fn an_expired_session_is_refused_and_pruned() {
        let sessions = Sessions::with_limits(Duration::ZERO, 10);
        let token = sessions.create().expect("randomness");
        assert!(!sessions.is_valid(&token));
        assert!(sessions.is_empty());
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::with_limits(SESSION_TTL, 3);
        let tokens: Vec<String> = (0..5)
            .map(|_| sessions.create().expect("randomness"))
            .collect();
        assert_eq!(sessions.len(), 3);
        // The newest always gets in; older ones made room.
        assert!(sessions.is_valid(&tokens[4]));
        let older = tokens[..4]
            .iter()
            .filter(|token| sessions.is_valid(token))
            .count();
        assert_eq!(older, 2);
    }

    #[test]
    fn cookies_are_read_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; refill_session=abc;refill_sessionx=no"),
        );
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("refill_session=def"),
        );
        assert_eq!(session_tokens(&headers).collect::<Vec<_>>(), ["abc", "def"]);
    }

    #[test]
    fn ids_are_percent_encoded_in_locations() {
        assert_eq!(path_segment("acme-1.x_~"), "acme-1.x_~");
        assert_eq!(path_segment("a b/é?"), "a%20b%2F%C3%A9%3F");
    }
}
