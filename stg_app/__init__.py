"""The stg Streamlit dashboard, shipped beside the library (`stg app` runs ``stg_app/Home.py``).

Importing this package imports nothing: Streamlit is only loaded when the pages run.
"""
