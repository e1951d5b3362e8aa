//! `clientConnection.qps` / `burst` (`--kube-api-qps`, `--kube-api-burst`): the API client's
//! request rate limit, as client-go's token bucket (`flowcontrol.NewTokenBucketRateLimiter`,
//! which is `golang.org/x/time/rate` waiting for a token before each request).
//!
//! A small token bucket of our own rather than a crate: all it needs is "how long until my
//! token", and `governor` (the maintained choice) would add a dependency tree for that.
//! It is a tower layer in the kube client's stack, so every request the agent sends (lists,
//! Events, the version probe) takes a token. Watches do not: client-go deliberately does not
//! rate-limit them ("We specifically don't want to rate limit watches", `rest/request.go`);
//! a watch is one long request whose events cost nothing more.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tower::{Layer, Service};

/// Tokens refill at `qps` a second up to `burst`; the bucket starts full. A request takes a
/// token, or reserves the next one and waits for it, so waiting requests go out in order
/// at the steady rate (as `rate.Limiter.Wait`).
#[derive(Debug)]
pub struct TokenBucket {
    qps: f64,
    burst: f64,
    /// Tokens (negative: reserved by waiting requests) as of the instant.
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// `None` when `qps` is negative: client-go then runs without a limiter. A zero `qps`
    /// or `burst` has already been replaced by the defaults (5 and 10).
    pub fn new(qps: f32, burst: i32) -> Option<TokenBucket> {
        if qps < 0.0 || !qps.is_finite() {
            return None;
        }
        let burst = f64::from(burst.max(1));
        Some(TokenBucket {
            qps: f64::from(qps),
            burst,
            state: Mutex::new((burst, now())),
        })
    }

    /// Takes a token at `now`: how long the caller must wait before sending.
    pub fn reserve(&self, now: Instant) -> Duration {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        let tokens = (s.0 + elapsed * self.qps).min(self.burst) - 1.0;
        *s = (tokens, now.max(s.1));
        if tokens >= 0.0 || self.qps == 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-tokens / self.qps)
        }
    }
}

/// Tokio's clock, so that a test with paused time sees the waits it sleeps.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The layer: wraps a clonable service (the kube client's stack behind a `Buffer`).
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    bucket: Arc<TokenBucket>,
}

impl RateLimitLayer {
    pub fn new(bucket: TokenBucket) -> RateLimitLayer {
        RateLimitLayer {
            bucket: Arc::new(bucket),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;
    fn layer(&self, inner: S) -> RateLimited<S> {
        RateLimited {
            inner,
            bucket: self.bucket.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RateLimited<S> {
    inner: S,
    bucket: Arc<TokenBucket>,
}

/// `?watch=true` (or `1`), as kube-runtime's watcher and client-go send it.
pub fn is_watch<B>(req: &http::Request<B>) -> bool {
    req.uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"))
}

impl<S, B> Service<http::Request<B>> for RateLimited<S>
where
    S: Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let wait = if is_watch(&req) {
            Duration::ZERO
        } else {
            self.bucket.reserve(now())
        };
        // The instance polled ready is the one that sends, after the wait; a clone takes
        // its place for the next request (tower's usual pattern for a deferred call).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        Box::pin(async move {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            inner.call(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_lets_burst_through_then_spaces_requests_at_qps() {
        let b = TokenBucket::new(2.0, 3).unwrap();
        let t0 = Instant::now();
        b.state.lock().unwrap().1 = t0;
        let waits: Vec<Duration> = (0..6).map(|_| b.reserve(t0)).collect();
        let ms: Vec<u128> = waits.iter().map(|d| d.as_millis()).collect();
        // 3 at once, then one every 500 ms, each reserving the next slot.
        assert_eq!(ms, vec![0, 0, 0, 500, 1000, 1500]);
        // 2 s later the three reservations are paid off and one token has come back.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(b.reserve(later), Duration::ZERO);
        assert_eq!(b.reserve(later).as_millis(), 500);
        // An idle bucket refills to burst, no further.
        let idle = later + Duration::from_secs(60);
        let waits: Vec<Duration> = (0..4).map(|_| b.reserve(idle)).collect();
        assert_eq!(waits[..3], [Duration::ZERO; 3]);
        assert_eq!(waits[3].as_millis(), 500);
    }

    #[test]
    fn negative_qps_is_no_limit_and_watches_are_recognized() {
        assert!(TokenBucket::new(-1.0, 10).is_none());
        let req = |uri: &str| http::Request::get(uri).body(()).unwrap();
        assert!(is_watch(&req(
            "/api/v1/nodes?fieldSelector=metadata.name%3Dn&watch=true&resourceVersion=1"
        )));
        assert!(!is_watch(&req("/api/v1/nodes?limit=500")));
        assert!(!is_watch(&req(
            "/apis/events.k8s.io/v1/namespaces/default/events"
        )));
    }

    /// Through the layer: with qps 5 and burst 1, the fourth request of a burst leaves
    /// 600 ms after the first; watches pass at once.
    #[tokio::test(start_paused = true)]
    async fn the_layer_delays_requests_but_not_watches() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        let t0 = tokio::time::Instant::now();
        let inner = tower::service_fn(move |r: http::Request<()>| {
            let log = log.clone();
            async move {
                log.lock()
                    .unwrap()
                    .push((r.uri().to_string(), t0.elapsed().as_millis()));
                Ok::<_, std::convert::Infallible>(())
            }
        });
        let mut svc = RateLimitLayer::new(TokenBucket::new(5.0, 1).unwrap()).layer(inner);
        let mut calls = Vec::new();
        for uri in ["/a", "/b", "/w?watch=true", "/c", "/d"] {
            std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
            calls.push(svc.call(http::Request::get(uri).body(()).unwrap()));
        }
        futures::future::join_all(calls).await;
        let mut got = sent.lock().unwrap().clone();
        got.sort_by_key(|(_, t)| *t);
        let at = |u: &str| got.iter().find(|(x, _)| x == u).unwrap().1;
        assert_eq!(at("/a"), 0);
        assert_eq!(at("/w?watch=true"), 0);
        assert_eq!((at("/b"), at("/c"), at("/d")), (200, 400, 600));
    }
}
