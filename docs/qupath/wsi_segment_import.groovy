/*
 * wsi-segment -> QuPath 0.5 / 0.6: bring a run's tissue.geojson into the open image without
 * stacking copies.
 *
 * - Regions you drew and ran with --roi come back in tissue.geojson with your object's id
 *   (metadata wsi_segment = "region"): their measurements ("TE area_um2", ...) are put on
 *   YOUR object; no second object is added. A region whose object is not in this image
 *   (another image, or it was deleted) is added as a new annotation with your class and name.
 * - Class polygons and the Tissue outline (metadata wsi_segment = "class") have the same
 *   ids on every run of the same slide: objects from an earlier import are replaced.
 *
 * Use: Automate > Script editor, File > Open this file, set OUT below to the --out folder
 * of the run, then Run (this image) or Run > Run for project (every image; each image
 * reads OUT/<image name without extension>/tissue.geojson, the extension as QuPath's
 * GeneralTools.stripExtension strips it: OS-1-detail.ome.tif -> OUT/OS-1-detail/).
 */
import qupath.lib.common.GeneralTools
import qupath.lib.io.PathIO

def OUT = '/path/to/wsi-segment-out'  // the run's --out folder

def entry = getProjectEntry()
def imageName = entry != null ? entry.getImageName() : getCurrentServer().getMetadata().getName()
// wsi-segment names the output folder of a slide by this same rule (a.ome.tif -> a);
// versions before it cut at the last '.' only (a.ome.tif -> a.ome): read such a folder too
def file = new File(new File(OUT, GeneralTools.stripExtension(imageName)), 'tissue.geojson')
def dot = imageName.lastIndexOf('.')
def older = new File(new File(OUT, dot > 0 ? imageName.substring(0, dot) : imageName), 'tissue.geojson')
if (!file.isFile() && older.isFile())
    file = older
if (!file.isFile()) {
    println "wsi-segment: ${file} not found: set OUT to the --out folder of the run"
    return
}

def hierarchy = getCurrentHierarchy()
def existing = [:]
hierarchy.getAllObjects(false).each { existing[it.getID()] = it }

def attached = 0
def added = []
def replaced = []
for (obj in PathIO.readObjects(file.toPath())) {
    def kind = obj.getMetadata().get('wsi_segment')
    def mine = existing[obj.getID()]
    if (kind == 'region' && mine != null) {
        def measurements = mine.getMeasurementList()
        measurements.putAll(obj.getMeasurementList())
        measurements.close()
        attached++
    } else {
        if (mine != null)
            replaced << mine
        added << obj
    }
}
removeObjects(replaced, true)
addObjects(added)
fireHierarchyUpdate()
println "wsi-segment: ${file}: measurements put on ${attached} of your regions; " +
        "${added.size()} objects added (${replaced.size()} from an earlier import replaced)"
