//! The Prometheus text exposition format (version 0.0.4): families with
//! `# HELP` and `# TYPE`, their samples grouped under them, label values
//! escaped. Families are filled shard by shard and written once, so every
//! family's samples stay together as the format requires.

use std::fmt::Write;

/// The content type of what [`render`] writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    /// `_bucket`, `_sum`, `_count` for histograms; empty otherwise.
    suffix: &'static str,
    labels: Vec<(&'static str, String)>,
    value: f64,
}

/// One metric family and its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<Sample>,
}

impl Family {
    pub fn counter(name: &'static str, help: &'static str) -> Family {
        Family::new(name, help, Kind::Counter)
    }

    pub fn gauge(name: &'static str, help: &'static str) -> Family {
        Family::new(name, help, Kind::Gauge)
    }

    pub fn histogram(name: &'static str, help: &'static str) -> Family {
        Family::new(name, help, Kind::Histogram)
    }

    fn new(name: &'static str, help: &'static str, kind: Kind) -> Family {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    /// Adds one sample of a counter or gauge.
    pub fn add(&mut self, labels: &[(&'static str, &str)], value: f64) {
        self.samples.push(Sample {
            suffix: "",
            labels: own(labels),
            value,
        });
    }

    /// Adds one histogram: `cumulative[i]` observations were at most
    /// `bounds[i]` (in the family's unit); `count` is every observation,
    /// the `+Inf` bucket.
    pub fn add_histogram(
        &mut self,
        labels: &[(&'static str, &str)],
        bounds: &[f64],
        cumulative: &[u64],
        sum: f64,
        count: u64,
    ) {
        for (bound, &n) in bounds.iter().zip(cumulative) {
            let mut with_le = own(labels);
            with_le.push(("le", format_value(*bound)));
            self.samples.push(Sample {
                suffix: "_bucket",
                labels: with_le,
                value: n as f64,
            });
        }
        let mut with_inf = own(labels);
        with_inf.push(("le", "+Inf".to_string()));
        self.samples.push(Sample {
            suffix: "_bucket",
            labels: with_inf,
            value: count as f64,
        });
        self.samples.push(Sample {
            suffix: "_sum",
            labels: own(labels),
            value: sum,
        });
        self.samples.push(Sample {
            suffix: "_count",
            labels: own(labels),
            value: count as f64,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

fn own(labels: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    labels
        .iter()
        .map(|&(name, value)| (name, value.to_string()))
        .collect()
}

/// Writes every family that has samples (an empty family would be a
/// `# TYPE` line with nothing under it).
pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for family in families.iter().filter(|f| !f.is_empty()) {
        let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(family.help));
        let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind.as_str());
        for sample in &family.samples {
            out.push_str(family.name);
            out.push_str(sample.suffix);
            if !sample.labels.is_empty() {
                out.push('{');
                for (i, (name, value)) in sample.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{name}=\"{}\"", escape_label(value));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", format_value(sample.value));
        }
    }
    out
}

/// Integers without a fraction, infinities and NaN as the format spells them.
pub fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value == f64::INFINITY {
        "+Inf".to_string()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_help_type_and_grouped_samples() {
        let mut requests = Family::counter("x_requests_total", "Requests.");
        requests.add(&[("shard", "0"), ("method", "ping")], 3.0);
        requests.add(&[("shard", "1"), ("method", "ping")], 4.0);
        let empty = Family::gauge("x_unused", "Never set.");
        let mut rss = Family::gauge("x_rss_bytes", "Memory.");
        rss.add(&[], 1_048_576.0);
        let text = render(&[requests, empty, rss]);
        assert_eq!(
            text,
            "# HELP x_requests_total Requests.\n\
             # TYPE x_requests_total counter\n\
             x_requests_total{shard=\"0\",method=\"ping\"} 3\n\
             x_requests_total{shard=\"1\",method=\"ping\"} 4\n\
             # HELP x_rss_bytes Memory.\n\
             # TYPE x_rss_bytes gauge\n\
             x_rss_bytes 1048576\n"
        );
    }

    #[test]
    fn histograms_have_buckets_inf_sum_and_count() {
        let mut latency = Family::histogram("x_seconds", "Latency.");
        latency.add_histogram(&[("shard", "0")], &[0.001, 0.5], &[2, 5], 1.25, 7);
        assert_eq!(
            render(&[latency]),
            "# HELP x_seconds Latency.\n\
             # TYPE x_seconds histogram\n\
             x_seconds_bucket{shard=\"0\",le=\"0.001\"} 2\n\
             x_seconds_bucket{shard=\"0\",le=\"0.5\"} 5\n\
             x_seconds_bucket{shard=\"0\",le=\"+Inf\"} 7\n\
             x_seconds_sum{shard=\"0\"} 1.25\n\
             x_seconds_count{shard=\"0\"} 7\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut family = Family::gauge("x", "a\\b\nc");
        family.add(&[("id", "q\"u\\o\nte")], 1.5);
        let text = render(&[family]);
        assert!(text.contains("# HELP x a\\\\b\\nc\n"), "{text}");
        assert!(text.contains("x{id=\"q\\\"u\\\\o\\nte\"} 1.5\n"), "{text}");
    }

    #[test]
    fn values_are_formatted_as_the_format_wants() {
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.00005), "0.00005");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(1e20), "100000000000000000000");
    }
}
