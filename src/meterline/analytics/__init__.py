"""Analytics: the queries behind the API, dashboard, CLI reports and exports."""
