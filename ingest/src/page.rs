//! The Credits page an operator opens in a browser: balance, consumption, spend against
//! the limit, live grants, and the latest ledger entries and recharge attempts. Served by
//! the console (`console.rs`), behind its login.

use serde_json::Value;

use crate::http::escape;

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => escape(text),
        Value::Null => "—".into(),
        other => escape(&other.to_string()),
    }
}

/// Renders the page from the credits view and the rows of the ledger and recharges.
pub fn render(customer: &str, view: &Value, ledger: &[Value], attempts: &[Value]) -> String {
    let auto = &view["auto_recharge"];
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=utf-8><title>Credits</title><style>body{font:14px system-ui;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}</style></head><body>",
    );
    html.push_str("<p><a href=/console/>Console</a></p>");
    html.push_str(&format!("<h1>Credits of {}</h1>", escape(customer)));
    html.push_str(&format!(
        "<p>Credit type <b>{}</b> · balance <b id=balance>{}</b> · consumption this period {}</p>",
        text(&view["credit_type"]),
        text(&view["balance"]),
        text(&view["consumption_this_period"])
    ));
    if auto.is_object() {
        html.push_str(&format!(
            "<p>Auto-recharge <b id=status>{}</b> {} · below {} → {} · spend {} of {} {} this period ({} recharges, {} – {})</p>",
            text(&auto["status"]),
            text(&auto["paused_reason"]),
            text(&auto["settings"]["threshold"]),
            text(&auto["settings"]["target_balance"]),
            text(&auto["spend_this_period"]["amount"]),
            text(&auto["spend_limit"]["amount"]),
            text(&auto["spend_limit"]["currency"]),
            text(&auto["recharges_this_period"]),
            text(&auto["period"]["start"]),
            text(&auto["period"]["end"]),
        ));
    } else {
        html.push_str("<p>Auto-recharge not set up.</p>");
    }
    html.push_str("<h2>Grants</h2><table><tr><th>id</th><th>type</th><th>priority</th><th>amount</th><th>remaining</th><th>expires</th></tr>");
    for grant in view["grants"].as_array().into_iter().flatten() {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            text(&grant["id"]),
            text(&grant["grant_type"]),
            text(&grant["priority"]),
            text(&grant["amount"]),
            text(&grant["remaining"]),
            text(&grant["expires_at"])
        ));
    }
    html.push_str("</table><h2>Recharges</h2><table><tr><th>id</th><th>at</th><th>credits</th><th>cost</th><th>status</th><th>reason</th></tr>");
    for attempt in attempts {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            text(&attempt["id"]),
            text(&attempt["at"]),
            text(&attempt["credits"]),
            text(&attempt["cost"]["amount"]),
            text(&attempt["status"]),
            text(&attempt["reason"])
        ));
    }
    html.push_str("</table><h2>Ledger</h2><table><tr><th>#</th><th>at</th><th>kind</th><th>amount</th><th>balance after</th><th>reference</th></tr>");
    for entry in ledger {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            text(&entry["id"]),
            text(&entry["at"]),
            text(&entry["kind"]),
            text(&entry["amount"]),
            text(&entry["balance_after"]),
            text(&entry["reference"])
        ));
    }
    html.push_str("</table></body></html>");
    html
}
