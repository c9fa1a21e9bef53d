"""Building blocks of the HTML report (``analyzers.report``): theme and charts.

Kept as Python modules (not loose .css/.html files) so they ship with any install of the
package without extra package-data configuration.
"""
