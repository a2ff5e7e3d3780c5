//! OpenTelemetry trace export (cargo feature `otel`, config `[otel]`).
//!
//! One span per MCP request, built after the request finished from what the
//! session already measured (start, duration, outcome): nothing is held
//! open across the request's awaits and nothing runs on the request path
//! unless export is configured. A finished span goes into the SDK's batch
//! processor, a bounded queue drained by its own thread; when that queue is
//! full the span is dropped and counted, never waited for. The export
//! thread POSTs OTLP/HTTP protobuf with a small blocking HTTP/1.1 client
//! over `std::net`, so no second async runtime comes near the shards.
//!
//! Without the feature every function here is an empty inline stub and the
//! crates are not compiled in.

use std::time::Duration;

use crate::config::OtelConfig;
use crate::observe::Outcome;
use crate::protocol::version::Era;
use crate::registry::SessionId;

#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    #[error("otel: cannot build the OTLP exporter for {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
    #[error("otel: export was already started in this process")]
    AlreadyStarted,
}

/// Keeps export running; [`OtelGuard::shutdown`] (or drop) sends what is
/// queued and stops the export thread.
#[must_use = "export stops when the guard is dropped"]
pub struct OtelGuard {
    #[cfg(feature = "otel")]
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

impl OtelGuard {
    /// Sends the queued spans (bounded by the export timeout) and stops.
    pub fn shutdown(self) {
        // Drop does the work.
    }
}

#[cfg(not(feature = "otel"))]
mod imp {
    use super::*;

    /// Built without `otel`: config validation already refused an endpoint.
    pub fn start(_config: &OtelConfig) -> Result<Option<OtelGuard>, OtelError> {
        Ok(None)
    }

    #[inline(always)]
    pub fn record_request(
        _method: &str,
        _outcome: Outcome,
        _elapsed: Duration,
        _era: Option<Era>,
        _session: Option<SessionId>,
    ) {
    }
}

#[cfg(feature = "otel")]
mod imp {
    use super::*;

    use std::cell::OnceCell;
    use std::io::{Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    use std::sync::OnceLock;
    use std::time::SystemTime;

    use opentelemetry::trace::{Span, SpanKind, Status, Tracer, TracerProvider};
    use opentelemetry::{Context, KeyValue};
    use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
    use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
    use opentelemetry_sdk::trace::{
        BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
    };
    use opentelemetry_sdk::Resource;

    /// Set once by [`start`]; shards read it once each (one atomic load per
    /// request while export is off).
    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

    thread_local! {
        /// This thread's tracer and shard label, made on its first span.
        static LOCAL: OnceCell<(SdkTracer, i64)> = const { OnceCell::new() };
    }

    pub fn start(config: &OtelConfig) -> Result<Option<OtelGuard>, OtelError> {
        if config.endpoint.is_empty() {
            return Ok(None);
        }
        let failed = |reason: String| OtelError::Exporter {
            endpoint: config.endpoint.clone(),
            reason,
        };
        let timeout = Duration::from_millis(config.export_timeout_ms);
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(config.endpoint.clone())
            .with_timeout(timeout)
            .with_http_client(BlockingHttp {
                timeout,
                response_bytes_max: config.response_bytes_max,
            })
            .build()
            .map_err(|error| failed(error.to_string()))?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(config.queue_size_max)
            .with_max_export_batch_size(config.batch_size_max)
            .with_scheduled_delay(Duration::from_millis(config.export_interval_ms))
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        PROVIDER
            .set(provider.clone())
            .map_err(|_| OtelError::AlreadyStarted)?;
        tracing::info!(endpoint = %config.endpoint, "exporting request spans over OTLP/HTTP");
        Ok(Some(OtelGuard { provider }))
    }

    impl Drop for OtelGuard {
        fn drop(&mut self) {
            if let Err(error) = self.provider.shutdown() {
                tracing::warn!(%error, "otel: spans may be lost at shutdown");
            }
        }
    }

    /// The shard a thread serves, from its name (`shard-N`); -1 elsewhere.
    fn shard_of_thread() -> i64 {
        std::thread::current()
            .name()
            .and_then(|name| name.strip_prefix("shard-"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(-1)
    }

    pub fn record_request(
        method: &str,
        outcome: Outcome,
        elapsed: Duration,
        era: Option<Era>,
        session: Option<SessionId>,
    ) {
        let Some(provider) = PROVIDER.get() else {
            return;
        };
        LOCAL.with(|local| {
            let (tracer, shard) =
                local.get_or_init(|| (provider.tracer("shardmcp"), shard_of_thread()));
            let end = SystemTime::now();
            let start = end.checked_sub(elapsed).unwrap_or(end);
            let mut attributes = Vec::with_capacity(5);
            attributes.push(KeyValue::new("mcp.method.name", method.to_string()));
            attributes.push(KeyValue::new("mcp.request.outcome", outcome.as_str()));
            attributes.push(KeyValue::new("shardmcp.shard", *shard));
            if let Some(era) = era {
                let era = match era {
                    Era::Handshake => "handshake",
                    Era::Stateless => "stateless",
                };
                attributes.push(KeyValue::new("shardmcp.era", era));
            }
            if let Some(session) = session {
                attributes.push(KeyValue::new("mcp.session.id", session.to_string()));
            }
            let builder = tracer
                .span_builder(method.to_string())
                .with_kind(SpanKind::Server)
                .with_start_time(start)
                .with_attributes(attributes);
            // An empty parent: no lookup of a thread's current context.
            let mut span = tracer.build_with_context(builder, &Context::new());
            if outcome != Outcome::Ok {
                span.set_status(Status::error(outcome.as_str()));
            }
            span.end_with_timestamp(end);
        });
    }

    /// HTTP/1.1 POST over a fresh `std::net` connection per export: runs on
    /// the batch processor's thread, which blocks on it by design. One
    /// request a second (the default interval) needs no connection reuse.
    #[derive(Debug)]
    pub(super) struct BlockingHttp {
        pub(super) timeout: Duration,
        pub(super) response_bytes_max: usize,
    }

    #[async_trait::async_trait]
    impl HttpClient for BlockingHttp {
        async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
            self.post(request)
        }
    }

    impl BlockingHttp {
        pub(super) fn post(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
            let uri = request.uri().to_string();
            let (host, port, path) = crate::config::parse_http_url(&uri)
                .map_err(|reason| format!("endpoint {uri}: {reason}"))?;
            let address = (host.trim_start_matches('[').trim_end_matches(']'), port)
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| format!("endpoint {uri}: host has no address"))?;
            let mut stream = TcpStream::connect_timeout(&address, self.timeout)?;
            stream.set_read_timeout(Some(self.timeout))?;
            stream.set_write_timeout(Some(self.timeout))?;
            let mut head = format!(
                "POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {}\r\nConnection: close\r\n",
                request.body().len()
            );
            for (name, value) in request.headers() {
                if name == http::header::CONTENT_LENGTH || name == http::header::HOST {
                    continue;
                }
                if let Ok(value) = value.to_str() {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
            }
            head.push_str("\r\n");
            stream.write_all(head.as_bytes())?;
            stream.write_all(request.body())?;
            stream.flush()?;
            let mut answer = Vec::new();
            // Bounded: a collector that talks on is cut off.
            let limit = u64::try_from(self.response_bytes_max).unwrap_or(u64::MAX);
            (&mut stream).take(limit).read_to_end(&mut answer)?;
            parse_response(&answer)
        }
    }

    /// Status line, headers and the body (what arrived of it).
    pub(super) fn parse_response(bytes: &[u8]) -> Result<Response<Bytes>, HttpError> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut headers);
        let body_at = match parsed.parse(bytes)? {
            httparse::Status::Complete(at) => at,
            httparse::Status::Partial => return Err("collector closed mid-answer".into()),
        };
        let mut response = Response::builder().status(parsed.code.unwrap_or(500));
        for header in parsed.headers.iter() {
            response = response.header(header.name, header.value);
        }
        Ok(response.body(Bytes::copy_from_slice(&bytes[body_at..]))?)
    }
}

/// Starts span export when `config.endpoint` is set; `None` when it is not.
pub fn start(config: &OtelConfig) -> Result<Option<OtelGuard>, OtelError> {
    imp::start(config)
}

/// One finished MCP request as a span (no-op while export is off).
#[inline]
pub fn record_request(
    method: &str,
    outcome: Outcome,
    elapsed: Duration,
    era: Option<Era>,
    session: Option<SessionId>,
) {
    imp::record_request(method, outcome, elapsed, era, session)
}

#[cfg(all(test, feature = "otel"))]
mod tests {
    use super::imp::{parse_response, BlockingHttp};
    use super::*;
    use opentelemetry_http::{Bytes, Request};
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn a_collector_answer_is_parsed() {
        let response = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.body().as_ref(), b"ok");
    }

    #[test]
    fn a_cut_off_answer_is_an_error() {
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Le").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn the_client_posts_the_body_and_reads_the_status() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"payload") {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "client closed early");
                got.extend_from_slice(&buf[..n]);
            }
            stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nbad")
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let client = BlockingHttp {
            timeout: Duration::from_secs(5),
            response_bytes_max: 1_024,
        };
        let request = Request::post(format!("http://127.0.0.1:{port}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(Bytes::from_static(b"payload"))
            .unwrap();
        let response = client.post(request).unwrap();
        assert_eq!(response.status(), 400);
        assert_eq!(response.body().as_ref(), b"bad");
        let sent = server.join().unwrap();
        assert!(sent.starts_with("POST /v1/traces HTTP/1.1\r\n"), "{sent}");
        assert!(sent.contains("Content-Length: 7\r\n"), "{sent}");
        assert!(
            sent.contains("content-type: application/x-protobuf\r\n"),
            "{sent}"
        );
    }

    #[test]
    fn an_unreachable_collector_is_an_error_not_a_hang() {
        // Bound then dropped: nothing listens there any more.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = BlockingHttp {
            timeout: Duration::from_secs(2),
            response_bytes_max: 1_024,
        };
        let request = Request::post(format!("http://127.0.0.1:{port}/v1/traces"))
            .body(Bytes::from_static(b"x"))
            .unwrap();
        assert!(client.post(request).is_err());
    }
}
