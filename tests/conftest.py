pytest_plugins = [
    "tests.fixtures.netguard",
    "tests.fixtures.app",
    "tests.fixtures.tls",
    "tests.fixtures.smtp",
    "tests.fixtures.dovecot",
    "tests.fixtures.browser",
    "tests.fixtures.cases",
    "tests.fixtures.accounts",
    "tests.fixtures.listeners",
    "tests.fixtures.tlsproxy",
    "tests.fixtures.graph",
]
