"""Exit 0 when the PostgreSQL server of the given URL accepts connections, else 1."""

import sys
from urllib.parse import urlsplit, urlunsplit

import psycopg

url = sys.argv[1]
# Connect to the maintenance database: the test database is created by the tests.
parts = urlsplit(url)
try:
    psycopg.connect(urlunsplit(parts._replace(path="/postgres")), connect_timeout=3).close()
except psycopg.Error:
    sys.exit(1)
