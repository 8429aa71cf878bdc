//! The wire contract (`nodepulse.v1`). Generated from `proto/nodepulse/v1/*.proto`.
