//! The pure pipeline behind `render`: files -> objects -> model -> IR -> text.

use crate::model;
use crate::model::options::Options;
use crate::objects::input::{ClusterObjects, InputError};
use crate::ruleset::{self, ir::Ruleset};
use crate::vocab::Note;

/// Objects and options to the desired ruleset, with a note for everything left out.
pub fn ruleset(objects: &ClusterObjects, opts: &Options) -> (Ruleset, Vec<Note>) {
    let (m, mut notes) = model::build(objects, opts);
    let (rs, more) = ruleset::build(&m);
    notes.extend(more);
    (rs, notes)
}

/// Reads every source (name, text) into one set of objects.
pub fn read_sources<'a>(
    sources: impl IntoIterator<Item = (&'a str, &'a str)>,
    notes: &mut Vec<Note>,
) -> Result<ClusterObjects, InputError> {
    let mut objects = ClusterObjects::default();
    for (name, text) in sources {
        objects.add_text(name, text, notes)?;
    }
    objects.sort();
    Ok(objects)
}
