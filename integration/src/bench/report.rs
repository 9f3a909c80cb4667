//! The figures a run collected, and their three renderings: the table on the terminal, the
//! JSON records (`bench/results/latest.json`) and a Markdown table for bench/README.md. Every
//! figure is the median of its runs, with min and max; ratios are Sluice's median over the
//! baseline's (`sluice-nosockmap`, Sluice without socket acceleration, is a baseline too). A
//! system or ratio column no record of the run has is left out of the tables.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

use super::{hist::Histogram, run::SCENARIOS};

/// Systems in the order of the table's columns; the ratio columns are Sluice over the others.
/// `iptables` (kube-proxy's iptables mode on the bridge CNI) is in the Service scenarios only.
pub const SYSTEMS: [&str; 5] = ["sluice", "sluice-nosockmap", "veth", "bridge", "iptables"];
pub const BASELINES: [&str; 4] = ["veth", "bridge", "sluice-nosockmap", "iptables"];
/// Socket acceleration's targets against the same node without it (issue 6): request rate
/// at least this many times, p99 latency at most this many times.
const SOCKMAP_RATE: f64 = 1.5;
const SOCKMAP_P99: f64 = 0.7;
/// Service load balancing's targets (issue 4): at 10,000 Services, Sluice keeps this share of
/// its connection rate at 10, has this many times iptables' rate, and this share of its p99.
const SVC_SCALE: f64 = 0.95;
const SVC_RATE: f64 = 2.0;
const SVC_P99: f64 = 0.5;

/// One figure of one scenario, with every run's value per system.
pub struct Record {
    pub scenario: String,
    pub metric: String,
    pub unit: String,
    pub higher_is_better: bool,
    pub runs: BTreeMap<String, Vec<f64>>,
}

#[derive(Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Every run's value, in the order measured.
    pub runs: Vec<f64>,
}

impl Summary {
    fn of(runs: &[f64]) -> Self {
        let mut v = runs.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            median,
            min: v[0],
            max: v[n - 1],
            runs: runs.to_vec(),
        }
    }
}

/// A latency distribution of one scenario, per system, merged over all rounds.
pub struct Dist {
    pub scenario: String,
    pub title: String,
    pub systems: BTreeMap<String, Histogram>,
}

#[derive(Default)]
pub struct Results {
    records: Vec<Record>,
    pub dists: Vec<Dist>,
}

impl Results {
    pub fn add(
        &mut self,
        scenario: &str,
        metric: &str,
        unit: &str,
        higher_is_better: bool,
        system: &str,
        value: f64,
    ) {
        let i = match self
            .records
            .iter()
            .position(|r| r.scenario == scenario && r.metric == metric)
        {
            Some(i) => i,
            None => {
                // In the order of the scenario list, whatever order they were measured in (a
                // socket acceleration record can come from a pod-pod measurement).
                let rank = |s: &str| SCENARIOS.iter().position(|x| *x == s).unwrap_or(usize::MAX);
                let at = self
                    .records
                    .iter()
                    .rposition(|r| rank(&r.scenario) <= rank(scenario))
                    .map_or(0, |i| i + 1);
                self.records.insert(
                    at,
                    Record {
                        scenario: scenario.into(),
                        metric: metric.into(),
                        unit: unit.into(),
                        higher_is_better,
                        runs: BTreeMap::new(),
                    },
                );
                at
            }
        };
        self.records[i]
            .runs
            .entry(system.into())
            .or_default()
            .push(value);
    }

    pub fn add_dist(&mut self, scenario: &str, title: &str, system: &str, h: &Histogram) {
        let i = match self.dists.iter().position(|d| d.scenario == scenario) {
            Some(i) => i,
            None => {
                self.dists.push(Dist {
                    scenario: scenario.into(),
                    title: title.into(),
                    systems: BTreeMap::new(),
                });
                self.dists.len() - 1
            }
        };
        self.dists[i]
            .systems
            .entry(system.into())
            .or_default()
            .merge(h);
    }

    fn median(&self, scenario: &str, metric: &str, system: &str) -> Option<f64> {
        self.records
            .iter()
            .find(|r| r.scenario == scenario && r.metric == metric)
            .and_then(|r| r.runs.get(system))
            .map(|runs| Summary::of(runs).median)
    }

    /// Sluice's median over `baseline`'s.
    fn ratio(&self, scenario: &str, metric: &str, baseline: &str) -> Option<f64> {
        self.ratio_of(scenario, metric, "sluice", baseline)
    }

    fn ratio_of(&self, scenario: &str, metric: &str, system: &str, baseline: &str) -> Option<f64> {
        let s = self.median(scenario, metric, system)?;
        let b = self.median(scenario, metric, baseline)?;
        (b != 0.0).then(|| s / b)
    }

    /// The records as `bench/results/latest.json` holds them: a list.
    pub fn json(&self) -> Value {
        Value::Array(
            self.records
                .iter()
                .map(|r| {
                    let systems: serde_json::Map<String, Value> = r
                        .runs
                        .iter()
                        .map(|(s, runs)| (s.clone(), json!(Summary::of(runs))))
                        .collect();
                    json!({
                        "scenario": r.scenario,
                        "metric": r.metric,
                        "unit": r.unit,
                        "higher_is_better": r.higher_is_better,
                        "systems": systems,
                    })
                })
                .collect(),
        )
    }

    /// The systems some record has, in column order.
    fn systems(&self) -> Vec<&'static str> {
        SYSTEMS
            .into_iter()
            .filter(|s| self.records.iter().any(|r| r.runs.contains_key(*s)))
            .collect()
    }

    /// The baselines some record has a ratio against.
    fn baselines(&self) -> Vec<&'static str> {
        BASELINES
            .into_iter()
            .filter(|b| {
                self.records
                    .iter()
                    .any(|r| self.ratio(&r.scenario, &r.metric, b).is_some())
            })
            .collect()
    }

    /// One row of cells per record: scenario, metric (unit), a cell per system, the ratios.
    fn rows(&self) -> Vec<Vec<String>> {
        let (systems, baselines) = (self.systems(), self.baselines());
        self.records
            .iter()
            .map(|r| {
                let mut row = vec![
                    r.scenario.clone(),
                    format!(
                        "{} ({}, {})",
                        r.metric,
                        r.unit,
                        if r.higher_is_better { "↑" } else { "↓" }
                    ),
                ];
                for s in &systems {
                    row.push(match r.runs.get(*s) {
                        Some(runs) => {
                            let m = Summary::of(runs);
                            format!("{} ({}–{})", num(m.median), num(m.min), num(m.max))
                        }
                        None => "—".into(),
                    });
                }
                for b in &baselines {
                    row.push(match self.ratio(&r.scenario, &r.metric, b) {
                        // Two decimals, unless that would show a non-zero ratio as 0.00.
                        Some(x) if x > 0.0 && x < 0.01 => format!("{}×", num(x)),
                        Some(x) => format!("{x:.2}×"),
                        None => "—".into(),
                    });
                }
                row
            })
            .collect()
    }

    fn header(&self) -> Vec<String> {
        let mut h = vec!["scenario".to_string(), "metric".to_string()];
        h.extend(
            self.systems()
                .iter()
                .map(|s| format!("{s} median (min–max)")),
        );
        h.extend(self.baselines().iter().map(|b| format!("sluice/{b}")));
        h
    }

    /// The table for the terminal, columns aligned.
    pub fn table(&self) -> String {
        let mut rows = vec![self.header()];
        rows.extend(self.rows());
        let cols = rows[0].len();
        let width: Vec<usize> = (0..cols)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for (i, r) in rows.iter().enumerate() {
            for (c, cell) in r.iter().enumerate() {
                let pad = width[c] - cell.chars().count();
                if c < 2 {
                    out.push_str(&format!("{cell}{}  ", " ".repeat(pad)));
                } else {
                    out.push_str(&format!("{}{cell}  ", " ".repeat(pad)));
                }
            }
            out = out.trim_end().to_string();
            out.push('\n');
            if i == 0 {
                let total: usize = width.iter().sum::<usize>() + 2 * (cols - 1);
                out.push_str(&"-".repeat(total));
                out.push('\n');
            }
        }
        out
    }

    /// The same table in Markdown.
    pub fn markdown(&self) -> String {
        let mut rows = vec![self.header()];
        rows.extend(self.rows());
        let mut out = String::new();
        for (i, r) in rows.iter().enumerate() {
            out.push_str(&format!("| {} |\n", r.join(" | ")));
            if i == 0 {
                let align: Vec<&str> = (0..r.len())
                    .map(|c| if c < 2 { "---" } else { "---:" })
                    .collect();
                out.push_str(&format!("| {} |\n", align.join(" | ")));
            }
        }
        out
    }

    /// The targets, each with whether this run met it (reported, never asserted).
    pub fn targets(&self) -> Vec<String> {
        let mut out = Vec::new();
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        // Sluice's targets against the baselines; the TC path alone is held to them too.
        for system in ["sluice", "sluice-nosockmap"] {
            for (scenario, metric) in [
                ("pod-pod-rr-1b", "rate"),
                ("pod-pod-rr-1k", "rate"),
                ("pod-pod-stream", "throughput"),
            ] {
                for (b, want) in [("veth", 0.95), ("bridge", 1.1)] {
                    if let Some(x) = self.ratio_of(scenario, metric, system, b) {
                        out.push(format!(
                            "{scenario} {metric}: {system}/{b} = {x:.3} (target ≥ {want}) {}",
                            verdict(x >= want)
                        ));
                    }
                }
            }
        }
        for r in self
            .records
            .iter()
            .filter(|r| r.scenario.starts_with("sockmap-"))
        {
            let Some(x) = self.ratio(&r.scenario, &r.metric, "sluice-nosockmap") else {
                continue;
            };
            let line = format!(
                "{} {}: sluice/sluice-nosockmap = {x:.3}",
                r.scenario, r.metric
            );
            match r.metric.as_str() {
                "rate" => out.push(format!(
                    "{line} (target ≥ {SOCKMAP_RATE}) {}",
                    verdict(x >= SOCKMAP_RATE)
                )),
                "p99" => out.push(format!(
                    "{line} (target ≤ {SOCKMAP_P99}) {}",
                    verdict(x <= SOCKMAP_P99)
                )),
                "throughput" => out.push(format!("{line} (no target)")),
                _ => {}
            }
        }
        out.extend(self.svc_targets());
        if let Some(p99) = self.median("cni-add", "p99", "sluice") {
            out.push(format!(
                "cni-add p99: sluice {} ms (target ≤ 50 ms) {}",
                num(p99),
                verdict(p99 <= 50.0)
            ));
        }
        if let Some(r) = self
            .records
            .iter()
            .find(|r| r.scenario == "cni-add-parallel-100" && r.metric == "failures")
        {
            if let Some(runs) = r.runs.get("sluice") {
                let total: f64 = runs.iter().sum();
                out.push(format!(
                    "cni-add-parallel-100: sluice failures {total} over {} rounds (target 0) {}",
                    runs.len(),
                    verdict(total == 0.0)
                ));
            }
        }
        out
    }
}

impl Results {
    /// Service load balancing (issue 4): Sluice at 10,000 Services against itself at 10 and
    /// against kube-proxy's iptables mode; the other Service figures' ratios, without target.
    fn svc_targets(&self) -> Vec<String> {
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        let mut out = Vec::new();
        for system in ["sluice", "iptables"] {
            let at = |n: &str| self.median(&format!("svc-crr-{n}"), "rate", system);
            if let (Some(big), Some(small)) = (at("10000"), at("10")) {
                let x = big / small;
                let target = if system == "sluice" {
                    format!("(target ≥ {SVC_SCALE}) {}", verdict(x >= SVC_SCALE))
                } else {
                    "(no target)".to_string()
                };
                out.push(format!(
                    "svc-crr rate: {system} at 10000 / {system} at 10 = {x:.3} {target}"
                ));
            }
        }
        for r in self
            .records
            .iter()
            .filter(|r| r.scenario.starts_with("svc-"))
        {
            let Some(x) = self.ratio(&r.scenario, &r.metric, "iptables") else {
                continue;
            };
            let line = format!("{} {}: sluice/iptables = {x:.3}", r.scenario, r.metric);
            out.push(match (r.scenario.as_str(), r.metric.as_str()) {
                ("svc-crr-10000", "rate") => {
                    format!("{line} (target ≥ {SVC_RATE}) {}", verdict(x >= SVC_RATE))
                }
                ("svc-crr-10000", "p99") => {
                    format!("{line} (target ≤ {SVC_P99}) {}", verdict(x <= SVC_P99))
                }
                _ => format!("{line} (no target)"),
            });
        }
        out
    }
}

/// A figure with as many digits as it deserves.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that a record summarises to median, min and max per system, and the JSON has the
    /// issue's shape.
    #[test]
    fn records_summarise_to_median_min_max() {
        let mut r = Results::default();
        for v in [3.0, 1.0, 2.0, 10.0] {
            r.add("pod-pod-rr-1b", "rate", "req/s", true, "sluice", v);
        }
        for v in [4.0, 2.0, 3.0] {
            r.add("pod-pod-rr-1b", "rate", "req/s", true, "veth", v);
        }
        let j = r.json();
        let rec = &j[0];
        assert_eq!(rec["scenario"], "pod-pod-rr-1b");
        assert_eq!(rec["higher_is_better"], true);
        assert_eq!(rec["systems"]["sluice"]["median"], 2.5);
        assert_eq!(rec["systems"]["sluice"]["min"], 1.0);
        assert_eq!(rec["systems"]["sluice"]["max"], 10.0);
        assert_eq!(rec["systems"]["veth"]["median"], 3.0);
        assert!(r.table().contains("0.83×"), "{}", r.table());
    }

    /// Test that a run of the Service scenarios alone shows only its two systems and their
    /// ratio, and judges the three Service targets at 10,000 Services.
    #[test]
    fn service_records_show_their_systems_and_targets() {
        let mut r = Results::default();
        for (scenario, sluice, iptables) in
            [("svc-crr-10", 100.0, 90.0), ("svc-crr-10000", 96.0, 40.0)]
        {
            r.add(scenario, "rate", "conn/s", true, "sluice", sluice);
            r.add(scenario, "rate", "conn/s", true, "iptables", iptables);
            r.add(scenario, "p99", "us", false, "sluice", 100.0);
            r.add(scenario, "p99", "us", false, "iptables", 150.0);
        }
        let header = r.table().lines().next().unwrap_or_default().to_string();
        assert!(header.contains("iptables median") && header.contains("sluice/iptables"));
        assert!(
            !header.contains("veth") && !header.contains("bridge"),
            "{header}"
        );
        let t = r.targets();
        let find = |s: &str| {
            t.iter()
                .find(|l| l.starts_with(s))
                .cloned()
                .unwrap_or_default()
        };
        assert!(find("svc-crr rate: sluice at 10000 / sluice at 10 = 0.960").ends_with("met"));
        assert!(find("svc-crr-10000 rate: sluice/iptables = 2.400").ends_with("met"));
        assert!(find("svc-crr-10000 p99: sluice/iptables = 0.667").ends_with("MISSED"));
        assert!(find("svc-crr-10 rate:").ends_with("(no target)"), "{t:?}");
    }

    /// Test that records come out in the scenario list's order, not the order measured, and
    /// a scenario's metrics in the order added.
    #[test]
    fn records_follow_the_scenario_order() {
        let mut r = Results::default();
        r.add("cni-add", "p50", "ms", false, "sluice", 1.0);
        r.add("pod-pod-rr-1b", "rate", "req/s", true, "sluice", 1.0);
        r.add("sockmap-rr-1b-1conn", "rate", "req/s", true, "sluice", 1.0);
        r.add("pod-pod-rr-1b", "p50", "us", false, "sluice", 1.0);
        r.add(
            "pod-pod-stream",
            "throughput",
            "Gbit/s",
            true,
            "sluice",
            1.0,
        );
        let order: Vec<(String, String)> = r
            .records
            .iter()
            .map(|x| (x.scenario.clone(), x.metric.clone()))
            .collect();
        let want = [
            ("pod-pod-rr-1b", "rate"),
            ("pod-pod-rr-1b", "p50"),
            ("pod-pod-stream", "throughput"),
            ("sockmap-rr-1b-1conn", "rate"),
            ("cni-add", "p50"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(s, m)| (s.to_string(), m.to_string()))
            .collect();
        assert_eq!(order, want);
    }
}
