# Latvian numeric dates end with a period: the year is an ordinal ("2026. gads").
DATE_FORMAT = "d.m.Y."
DATETIME_FORMAT = "d.m.Y. H:i"
SHORT_DATE_FORMAT = "d.m.Y."
SHORT_DATETIME_FORMAT = "d.m.Y. H:i"
TIME_FORMAT = "H:i"
