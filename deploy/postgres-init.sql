-- Run once by the postgres image on an empty volume: Prefect's own database beside recsys's.
CREATE DATABASE prefect OWNER recsys;
