"""The SQL store: typed schema, engines, migrations, bulk loading and plain-data queries."""
