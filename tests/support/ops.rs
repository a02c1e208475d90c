//! The ops listener from a test's side: plain HTTP GETs and Prometheus
//! text parsed into samples.

/// `GET url` over plain HTTP/1.1: (status, body).
pub async fn http_get(url: &str) -> (u16, String) {
    use http_body_util::BodyExt as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = client.get(url.parse().expect("url")).await.expect("GET");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The value of the Prometheus sample `name{labels…}` whose labels include
/// every `key="value"` in `labels`; 0 when there is none. Panics if more
/// than one series matches, so a count cannot be a silent sum.
pub fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<f64> = metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            let rest = format!(",{rest}");
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!(",{k}=\"{v}\""))))
            .then(|| value.parse().expect("a number"))
        })
        .collect();
    assert!(
        matching.len() <= 1,
        "{name} {labels:?} matches {} series",
        matching.len()
    );
    matching.first().copied().unwrap_or(0.0)
}
