/*
 * wsi-segment -> QuPath 0.5 / 0.6: bring a run's tissue.geojson into the open image without
 * stacking copies.
 *
 * - Regions you drew and ran with --roi come back in tissue.geojson naming your object's id
 *   (metadata wsi_segment = "region", wsi_segment_region_of = your object's id): their
 *   measurements ("TE area_um2", ...) are put on YOUR object, replacing an earlier
 *   import's (a share the run left out, as a region without tissue has none, is removed,
 *   not kept); no second object is added. A region whose object is not in this image
 *   (another image, or it was deleted) is added as a new annotation with your class and
 *   name.
 * - Class polygons and the Tissue outline (metadata wsi_segment = "class") are added; every
 *   object an earlier import of wsi-segment results added (anything with the metadata key
 *   wsi_segment, by this script or by a plain import) is removed first, so nothing piles up
 *   and no id is doubled. Your own objects never carry that key.
 *
 * Use: Automate > Script editor, File > Open this file, set OUT below to the --out folder
 * of the run, then Run (this image) or Run > Run for project (every image; each image
 * reads OUT/<image name without extension>/tissue.geojson, the extension as QuPath's
 * GeneralTools.stripExtension strips it: OS-1-detail.ome.tif -> OUT/OS-1-detail/; a DICOM
 * slide, a folder of .dcm files QuPath opens by one of them, reads OUT/<that folder's name>/,
 * as wsi-segment names it whichever of its files or the folder itself it was given).
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
// a DICOM slide: the folder holding the .dcm file QuPath opened names the output folder
def dcm = getCurrentServer().getURIs().find { it.getPath()?.toLowerCase()?.endsWith('.dcm') }
def dicomFolder = dcm != null ? new File(dcm.getPath()).getParentFile()?.getName() : null
def dicomFile = dicomFolder ? new File(new File(OUT, dicomFolder), 'tissue.geojson') : null
if (dicomFile != null && (dicomFile.isFile() || !file.isFile()))
    file = dicomFile  // (a run given the .dcm file by versions before this rule: OUT/<file name>/)
if (!file.isFile()) {
    println "wsi-segment: ${file} not found: set OUT to the --out folder of the run"
    return
}

def hierarchy = getCurrentHierarchy()
def objects = PathIO.readObjects(file.toPath())
def byId = [:]
hierarchy.getAllObjects(false).each { byId[it.getID().toString()] = it }
// the user's objects that regions of this run name (metadata wsi_segment_region_of)
def named = objects.collect { it.getMetadata().get('wsi_segment_region_of') }
def targets = named.findAll { it != null && byId.containsKey(it) }.collect { byId[it] } as Set
// what an earlier import of wsi-segment results added (whichever run, however imported):
// every object carrying the metadata key wsi_segment, except a region of this run
def earlier = hierarchy.getAllObjects(false).findAll {
    it.getMetadata().get('wsi_segment') != null && !targets.contains(it)
}

def attached = 0
def added = []
for (obj in objects) {
    def mine = byId[obj.getMetadata().get('wsi_segment_region_of')]
    if (obj.getMetadata().get('wsi_segment') == 'region' && mine != null && targets.contains(mine)) {
        def measurements = mine.getMeasurementList()
        // a share this run left out (undefined: no tissue in the region) must not keep an
        // earlier import's value: each class's share goes first, then what this run wrote
        // is put (getMeasurementNames: QuPath 0.5 and 0.6 both have it)
        def written = obj.getMeasurementList()
        def suffix = ' area_um2'
        for (name in written.getMeasurementNames().findAll { it.endsWith(suffix) }) {
            def cls = name.substring(0, name.length() - suffix.length())
            measurements.remove(cls + ' fraction_of_tissue')
        }
        measurements.putAll(written)
        measurements.close()
        attached++
    } else {
        added << obj
    }
}
removeObjects(earlier, true)
addObjects(added)
fireHierarchyUpdate()
println "wsi-segment: ${file}: measurements put on ${attached} of your regions; " +
        "${added.size()} objects added (${earlier.size()} from an earlier import removed)"
