//! The figures a run collected, and their three renderings: the table on the terminal, the
//! JSON records (`bench/results/latest.json`) and a Markdown table for bench/README.md. Every
//! figure is the median of its runs, with min and max; ratios are a system's median over its
//! baseline's ([`RATIOS`]: mostly Sluice over the others; `sluice-nosockmap`, Sluice without
//! socket acceleration, is a baseline too, and for the NetworkPolicy scenarios each Sluice
//! system is set against itself without policies; across nodes, Sluice's native routing
//! against plain routes and its tunnel against flannel). The tables come in four groups (pod
//! to pod and CNI, Services, NetworkPolicy, cross-node), each with the system and ratio
//! columns its records have.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

use super::{hist::Histogram, run::SCENARIOS};

/// Systems in the order of the table's columns. `iptables` (kube-proxy's iptables mode on the
/// bridge CNI) is in the Service scenarios only; the `-nopolicy` systems and `sluice-empty` in
/// the NetworkPolicy ones.
pub const SYSTEMS: [&str; 12] = [
    "sluice",
    "sluice-nopolicy",
    "sluice-nosockmap",
    "sluice-nosockmap-nopolicy",
    "sluice-empty",
    "veth",
    "bridge",
    "iptables",
    "sluice-tunnel",
    "sluice-native",
    "routed",
    "flannel",
];
/// The ratio columns, (system, baseline): the system's median over the baseline's.
pub const RATIOS: [(&str, &str); 9] = [
    ("sluice", "veth"),
    ("sluice", "bridge"),
    ("sluice", "sluice-nosockmap"),
    ("sluice", "iptables"),
    ("sluice", "sluice-nopolicy"),
    ("sluice-nosockmap", "sluice-nosockmap-nopolicy"),
    ("sluice", "sluice-empty"),
    ("sluice-native", "routed"),
    ("sluice-tunnel", "flannel"),
];
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
    pub(super) records: Vec<Record>,
    pub dists: Vec<Dist>,
}

/// The group of tables a scenario is shown in.
fn group(scenario: &str) -> u8 {
    if scenario.starts_with("svc-") {
        1
    } else if scenario.starts_with("xnode-") {
        3
    } else if scenario.starts_with("policy-")
        || scenario.starts_with("agent-rss-")
        || scenario.starts_with("manifests-")
    {
        2
    } else {
        0
    }
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
            None => self.insert(Record {
                scenario: scenario.into(),
                metric: metric.into(),
                unit: unit.into(),
                higher_is_better,
                runs: BTreeMap::new(),
            }),
        };
        self.records[i]
            .runs
            .entry(system.into())
            .or_default()
            .push(value);
    }

    /// Inserts a record of a scenario not recorded yet in the order of the scenario list,
    /// whatever order they were measured in (a socket acceleration record can come from a
    /// pod-pod measurement), after the scenario's other metrics; returns its index.
    pub(super) fn insert(&mut self, r: Record) -> usize {
        let rank = |s: &str| SCENARIOS.iter().position(|x| *x == s).unwrap_or(usize::MAX);
        let at = self
            .records
            .iter()
            .rposition(|x| rank(&x.scenario) <= rank(&r.scenario))
            .map_or(0, |i| i + 1);
        self.records.insert(at, r);
        at
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

    pub(super) fn median(&self, scenario: &str, metric: &str, system: &str) -> Option<f64> {
        self.records
            .iter()
            .find(|r| r.scenario == scenario && r.metric == metric)
            .and_then(|r| r.runs.get(system))
            .map(|runs| Summary::of(runs).median)
    }

    /// Sluice's median over `baseline`'s.
    pub(super) fn ratio(&self, scenario: &str, metric: &str, baseline: &str) -> Option<f64> {
        self.ratio_of(scenario, metric, "sluice", baseline)
    }

    pub(super) fn ratio_of(
        &self,
        scenario: &str,
        metric: &str,
        system: &str,
        baseline: &str,
    ) -> Option<f64> {
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

    /// The records of one table group.
    fn of_group(&self, g: u8) -> Vec<&Record> {
        self.records
            .iter()
            .filter(|r| group(&r.scenario) == g)
            .collect()
    }

    /// The systems some record of `records` has, in column order.
    fn systems(records: &[&Record]) -> Vec<&'static str> {
        SYSTEMS
            .into_iter()
            .filter(|s| records.iter().any(|r| r.runs.contains_key(*s)))
            .collect()
    }

    /// The ratios some record of `records` has.
    fn ratios(&self, records: &[&Record]) -> Vec<(&'static str, &'static str)> {
        RATIOS
            .into_iter()
            .filter(|(s, b)| {
                records
                    .iter()
                    .any(|r| self.ratio_of(&r.scenario, &r.metric, s, b).is_some())
            })
            .collect()
    }

    /// One table of a group: the header, then a row of cells per record (scenario, metric
    /// (unit), a cell per system, the ratios). Empty if the group has no record.
    fn rows(&self, g: u8) -> Vec<Vec<String>> {
        let records = self.of_group(g);
        if records.is_empty() {
            return Vec::new();
        }
        let (systems, ratios) = (Self::systems(&records), self.ratios(&records));
        let mut header = vec!["scenario".to_string(), "metric".to_string()];
        header.extend(systems.iter().map(|s| format!("{s} median (min–max)")));
        header.extend(ratios.iter().map(|(s, b)| format!("{s}/{b}")));
        let mut rows = vec![header];
        for r in records {
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
            for (s, b) in &ratios {
                row.push(match self.ratio_of(&r.scenario, &r.metric, s, b) {
                    // Two decimals, unless that would show a non-zero ratio as 0.00.
                    Some(x) if x > 0.0 && x < 0.01 => format!("{}×", num(x)),
                    Some(x) => format!("{x:.2}×"),
                    None => "—".into(),
                });
            }
            rows.push(row);
        }
        rows
    }

    /// The tables for the terminal, columns aligned, a blank line between groups.
    pub fn table(&self) -> String {
        let mut tables = Vec::new();
        for g in 0..4 {
            let rows = self.rows(g);
            if rows.is_empty() {
                continue;
            }
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
            tables.push(out);
        }
        tables.join("\n")
    }

    /// The same tables in Markdown.
    pub fn markdown(&self) -> String {
        let mut tables = Vec::new();
        for g in 0..4 {
            let rows = self.rows(g);
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
            if !out.is_empty() {
                tables.push(out);
            }
        }
        tables.join("\n")
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
