//! The hub's web view for people: server-rendered HTML and SVG (maud), built
//! only from what the disclosure gate released (the same JSON the API returns),
//! so a page can never show more than a partner's program could ask for. Pure:
//! no I/O; `http::app` serves it.

pub mod charts;
pub mod pages;

use crate::auth::Person;
use maud::{html, Markup, DOCTYPE};

/// The stylesheet, served at `/app/static/pennine.css` (no CDN, no inline styles).
pub const CSS: &str = include_str!("../../assets/pennine.css");
/// The icon, served at `/app/static/pennine.svg`.
pub const ICON: &str = include_str!("../../assets/pennine.svg");

/// What every signed-in page shows around its content.
pub struct Chrome<'a> {
    pub title: &'a str,
    pub person: Option<&'a Person>,
    /// The session's CSRF token, for the sign-out form.
    pub csrf: Option<&'a str>,
}

pub fn layout(c: &Chrome, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en-GB" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (c.title) " · Pennine" }
                link rel="stylesheet" href="/app/static/pennine.css";
                link rel="icon" type="image/svg+xml" href="/app/static/pennine.svg";
            }
            body {
                header.top {
                    a href="/app/" { strong { "Pennine" } " learning health system" }
                    @if let Some(p) = c.person {
                        nav aria-label="Main" {
                            ul {
                                li { a href="/app/" { "Pathways" } }
                                @if let Some(ods) = &p.provider {
                                    li { a href=(format!("/app/providers/{ods}")) { "My provider" } }
                                }
                                li { a href="/app/quality" { "Data quality" } }
                                li { a href="/transparency" { "Transparency" } }
                            }
                        }
                        div {
                            span { (p.name) " (" (p.public_label()) ") " }
                            @if let Some(t) = c.csrf {
                                form method="post" action="/app/logout" {
                                    input type="hidden" name="csrf" value=(t);
                                    button type="submit" { "Sign out" }
                                }
                            }
                        }
                    } @else {
                        nav aria-label="Main" { ul { li { a href="/transparency" { "Transparency" } } li { a href="/app/login" { "Sign in" } } } }
                    }
                }
                main id="content" { (body) }
                footer { "Figures are aggregates released through Pennine's disclosure control: small cells are withheld, counts may be rounded. Patient-level data never leaves a region." }
            }
        }
    }
}

/// A period form (`periodStart`, `periodEnd`) that reloads the page.
pub fn period_form(action: &str, start: &str, end: &str) -> Markup {
    html! {
        form.period method="get" action=(action) {
            div { label for="periodStart" { "From" } input id="periodStart" name="periodStart" value=(start) pattern="[0-9]{4}(-[0-9]{2}(-[0-9]{2})?)?" required; }
            div { label for="periodEnd" { "To" } input id="periodEnd" name="periodEnd" value=(end) pattern="[0-9]{4}(-[0-9]{2}(-[0-9]{2})?)?" required; }
            div { button.primary type="submit" { "Show" } }
        }
    }
}

/// An error page's content.
pub fn problem(c: &Chrome, heading: &str, text: &str) -> Markup {
    layout(
        c,
        html! {
            h1 { (heading) }
            p.notice.error role="alert" { (text) }
            p { a href="/app/" { "Back to the pathways" } }
        },
    )
}
