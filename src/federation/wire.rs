//! The messages between the hub and a node's federation API, typed on both
//! sides: the hub serialises these structs and the node deserialises the same
//! structs (unknown members are refused), so neither side reads the other's
//! JSON by string key. Only aggregates travel: sufficient statistics per group.

use super::{Disclosure, Measure, MeasureStats};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /federation/aggregate`: one approved view, by name and digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AggregateRequest {
    pub view_reference: String,
    /// SHA-256 of the view's definition as the hub has it.
    pub view_digest: String,
    pub group_by: Vec<String>,
    pub measures: Vec<Measure>,
    /// The settings the hub's gate applies (a node refuses laxer ones than its floor).
    pub disclosure: Disclosure,
    /// How long the hub waits; the node sends no answer after it (the view's rows it
    /// was building are kept for the next question).
    pub deadline_ms: u64,
}

/// One group's statistics at one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupStats {
    pub key: Vec<Value>,
    /// Distinct people behind the group (by the view's subject column).
    pub contributors: u64,
    /// The wrapping sum of the group's record keys.
    pub cell_key: u64,
    pub measures: Vec<MeasureStats>,
}

/// A node's answer to `AggregateRequest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeAggregate {
    pub region: String,
    pub last_updated: Option<String>,
    /// Share of the regional profile's must-support elements present in the
    /// resources of the view's type that this node has received.
    pub completeness: Option<f64>,
    pub groups: Vec<GroupStats>,
    /// The node's own floor (the hub applies the stricter).
    pub disclosure: Disclosure,
}

/// A node's answer to `GET /federation/count/{type}?...`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeCount {
    pub region: String,
    pub count: u64,
    /// The wrapping sum of the matched resources' record keys.
    pub cell_key: u64,
    pub last_updated: Option<String>,
    pub completeness: Option<f64>,
    pub disclosure: Disclosure,
}

/// `POST /federation/measure`: one pathway, by id and version, over a period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeasureRequest {
    pub measure: String,
    /// The version the hub runs; a node with another answers with its own and no counts.
    pub version: String,
    /// Inclusive days, `YYYY-MM-DD`.
    pub period_start: String,
    pub period_end: String,
    pub disclosure: Disclosure,
    pub deadline_ms: u64,
}

/// A node's answer to `MeasureRequest`: exact counts (with cell keys) per group and
/// stratum, for the hub's gate; no episode, no row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeMeasure {
    pub region: String,
    pub measure: String,
    /// The version this node runs.
    pub version: String,
    /// `None` when the node runs another version than the hub asked for.
    pub counts: Option<crate::pathways::Counts>,
    pub last_updated: Option<String>,
    pub completeness: Option<f64>,
    pub disclosure: Disclosure,
}

/// `POST /federation/regress`: one step of a fit the hub drives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegressRequest {
    /// The hub's name for the fit (random), which every step repeats.
    pub fit: String,
    pub step: RegressStep,
    pub disclosure: Disclosure,
    pub deadline_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum RegressStep {
    /// Find the model's usable rows in an approved view, check them, hold them for the rounds.
    #[serde(rename_all = "camelCase")]
    Open {
        view_reference: String,
        view_digest: String,
        model: super::regress::Model,
    },
    /// As `Open`, over a pathway's episodes: the population of `group` over the period,
    /// its outcome (for `mortality`, death) against `model`'s predictors.
    #[serde(rename_all = "camelCase")]
    OpenCohort {
        measure: String,
        version: String,
        period_start: String,
        period_end: String,
        group: String,
        model: super::regress::Model,
    },
    /// Expected outcomes per provider at the fitted coefficients (cohorts only).
    Expected {
        design: super::regress::Design,
        beta: Vec<f64>,
    },
    /// Sums over the held rows at `beta` (`None`: the family's starting values).
    Round {
        design: super::regress::Design,
        beta: Option<Vec<f64>>,
    },
    /// The fit is over: let the rows go.
    Close,
}

/// A node's answer to a step: `refused` says why it does not take part (no figures then).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeRegress {
    pub region: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Open: usable rows, rows dropped, and each categorical predictor's levels (names only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub levels: Option<Vec<Vec<String>>>,
    /// Round: the sums.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<super::glm::Part>,
    /// Expected: per provider, and the binned probabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<super::regress::Expected>,
    pub disclosure: Disclosure,
}
