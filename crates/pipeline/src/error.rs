//! Errors in pipeline files: every one names file:line:col and what was expected.

use std::fmt;

use super::model::Span;

/// One problem at one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub span: Span,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0 marks a problem with the file as a whole (it cannot be read).
        if self.span.line == 0 {
            write!(f, "{}: {}", self.span.file.display(), self.message)
        } else {
            write!(f, "{}: {}", self.span, self.message)
        }
    }
}

/// Every problem found in a pipeline file, in file order. Display prints one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    errors: Vec<Diagnostic>,
}

impl SpecError {
    /// Sorts by position; `errors` must not be empty (an empty error is no error).
    pub fn new(mut errors: Vec<Diagnostic>) -> Self {
        debug_assert!(!errors.is_empty());
        errors.sort_by(|a, b| {
            (&a.span.file, a.span.line, a.span.col).cmp(&(&b.span.file, b.span.line, b.span.col))
        });
        errors.dedup();
        SpecError { errors }
    }

    pub fn single(span: Span, message: impl Into<String>) -> Self {
        SpecError {
            errors: vec![Diagnostic {
                span,
                message: message.into(),
            }],
        }
    }

    pub fn errors(&self) -> &[Diagnostic] {
        &self.errors
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

/// "did you mean 'x'?" for a misspelt name, when one candidate is close enough.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 1.max(c.len() / 3) && *d < word.chars().count())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}
