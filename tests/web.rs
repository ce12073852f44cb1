//! The gateway's web page in a real headless browser: `tests/python/web_page.py` drives Debian's
//! `chromium` with Playwright against a local stack on the shapes model (generate with streamed
//! progress and previews, a server error inline, cancel, variations, a painted mask and
//! inpainting, a text diff, an interpolation, the API key, a phone's width). `scripts/test`
//! installs the browser and Playwright (`setup_browser` in scripts/lib.sh). Screenshots of each
//! step go to `target/tmp/web-page/`; with `UNCLIP_UPDATE_SCREENSHOTS=1` the main one also
//! replaces `docs/web-page.png`.

use unclip_e2e::{StackOptions, python, root, stack};

/// The page, served by the real gateway, does every step of the script in Chromium, and every
/// check of the script holds (it prints its checks and screenshots).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_page_in_chromium() {
    let stack = stack(StackOptions::default()).await;
    let url = stack.gateway_url().unwrap();
    let artifacts = root().join("target/tmp/web-page");
    let mut command = tokio::process::Command::new(python());
    command
        .arg(root().join("tests/python/web_page.py"))
        .arg("--url")
        .arg(&url)
        .arg("--artifacts")
        .arg(&artifacts);
    if std::env::var_os("UNCLIP_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
        command
            .arg("--docs-screenshot")
            .arg(root().join("docs/web-page.png"));
    }
    let output = command
        .output()
        .await
        .expect("running tests/python/web_page.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}{stderr}");
    assert!(
        output.status.success(),
        "the web page script failed (screenshots so far in {}); scripts/test installs chromium \
         and Playwright (setup_browser in scripts/lib.sh)",
        artifacts.display()
    );
    assert!(stdout.contains("web page: all checks passed"));
    stack.shutdown().await.unwrap();
}
