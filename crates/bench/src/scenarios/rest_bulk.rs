//! `rest-bulk`: listing 50,000 deals with the client's `list_all`, against
//! fast_bitrix24's `get_all`. Needs the REST client (crates/client).

use crate::Ctx;
use crate::report::Report;

pub async fn run(_ctx: &Ctx<'_>, report: &mut Report) -> anyhow::Result<()> {
    report.note(
        "not built yet: the REST client (crates/client) is not committed; this scenario \
         reports nothing until it is",
    );
    Ok(())
}
