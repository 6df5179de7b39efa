"""gin files (a package so gin can resolve includes as package resources)."""
