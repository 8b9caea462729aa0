//! Business rejections: an input the shard refuses, as a value with a stable code and the
//! field at fault. Nothing rejected changes state.

use serde::Serialize;

/// How a rejection maps onto the HTTP contract (the shell picks the status code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectionKind {
    /// Something named does not exist (404).
    NotFound,
    /// A value is malformed or out of range (400).
    Invalid,
    /// Conflicts with existing state (409).
    Conflict,
    /// Well-formed but breaks a business rule (422).
    Rule,
}

/// Why the shard refused an input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
pub enum Rejection {
    /// The usage event names a feature the catalog does not have.
    #[error("unknown feature {0:?}")]
    UnknownFeature(String),
    /// No such credit type.
    #[error("unknown credit type {0:?}")]
    UnknownCreditType(String),
    /// No such product.
    #[error("unknown product {0:?}")]
    UnknownProduct(String),
    /// No such plan.
    #[error("unknown plan {0:?}")]
    UnknownPlan(String),
    /// No such customer.
    #[error("unknown customer {0:?}")]
    UnknownCustomer(String),
    /// No such grant for this customer.
    #[error("unknown grant {0:?}")]
    UnknownGrant(String),
    /// A field's value is not acceptable.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field at fault, as the wire names it.
        field: &'static str,
        /// What was expected and what was found.
        reason: String,
    },
    /// The change would conflict with existing state.
    #[error("{field}: {reason}")]
    Conflict {
        /// The field at fault.
        field: &'static str,
        /// What conflicts.
        reason: String,
    },
    /// The result would not fit the fixed-point range.
    #[error("{field}: the result would leave the representable range")]
    Overflow {
        /// The field whose value overflowed.
        field: &'static str,
    },
}

impl Rejection {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownFeature(_) => "unknown_feature",
            Self::UnknownCreditType(_) => "unknown_credit_type",
            Self::UnknownProduct(_) => "unknown_product",
            Self::UnknownPlan(_) => "unknown_plan",
            Self::UnknownCustomer(_) => "unknown_customer",
            Self::UnknownGrant(_) => "unknown_grant",
            Self::Invalid { .. } => "invalid",
            Self::Conflict { .. } => "conflict",
            Self::Overflow { .. } => "overflow",
        }
    }

    /// The field at fault, when one is.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::UnknownFeature(_) => Some("feature_id"),
            Self::UnknownCreditType(_) => Some("credit_type"),
            Self::UnknownProduct(_) => Some("product"),
            Self::UnknownPlan(_) => Some("plan"),
            Self::UnknownCustomer(_) => Some("customer_id"),
            Self::UnknownGrant(_) => Some("grant"),
            Self::Invalid { field, .. }
            | Self::Conflict { field, .. }
            | Self::Overflow { field } => Some(field),
        }
    }

    /// Which family of HTTP answers fits.
    pub fn kind(&self) -> RejectionKind {
        match self {
            Self::UnknownCreditType(_)
            | Self::UnknownProduct(_)
            | Self::UnknownPlan(_)
            | Self::UnknownCustomer(_)
            | Self::UnknownGrant(_) => RejectionKind::NotFound,
            Self::UnknownFeature(_) | Self::Invalid { .. } => RejectionKind::Invalid,
            Self::Conflict { .. } => RejectionKind::Conflict,
            Self::Overflow { .. } => RejectionKind::Rule,
        }
    }

    /// Shorthand for [`Rejection::Invalid`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }
}
