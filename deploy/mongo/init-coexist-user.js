// Runs once, from /docker-entrypoint-initdb.d, when the mongo-data volume is empty.
// Creates the least-privilege `coexist` user the sink connects as (readWrite on its database
// only). The root user (MONGO_INITDB_ROOT_*) is for operators, never for the application.
// Changing MONGO_APP_PASSWORD later does NOT update the user: run db.changeUserPassword().
const password = process.env.MONGO_APP_PASSWORD;
if (!password) {
  throw new Error("MONGO_APP_PASSWORD is not set");
}
const dbName = process.env.MONGO_APP_DATABASE || "coexist";

db.getSiblingDB(dbName).createUser({
  user: "coexist",
  pwd: password,
  roles: [{ role: "readWrite", db: dbName }],
});
print(`created user coexist on ${dbName}`);
