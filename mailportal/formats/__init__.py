"""Date and time formats of the five languages (settings.FORMAT_MODULE_PATH).

Numeric dates and a 24-hour clock everywhere. A date written with a month name takes the case
of its sentence in Latvian, Russian, Lithuanian and Estonian ("kopš 3. decembra", "līdz 7.
decembrim"), and Django's formats give only the nominative; a numeric date reads right in any
case. The panel still sets dates apart after a label ("Ieslēgta: 03.12.2026. 08:44"), so no
sentence has to decline one. English gets day-month-year and no "a.m.": "8:44 a.m." at the
end of a sentence printed "a.m.." and Baltic readers use the 24-hour clock anyway.
"""
